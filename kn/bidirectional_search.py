"""Part 3.1 Result 7 (papers.md): the masked model's recipe search, pre-registered.

Written before any of its runs (git history shows it). At the cpu profile the masked model of
kn.bidirectional.twins (100 people, 2x128 encoder, 500 exposures = 800 pretraining steps at lr 3e-3,
QA finetuning 30 passes at lr 1e-3) answered 9% of its own train_people (pretraining loss 3.7 nats a
masked token), so R7's guard (>= kn.guards.GUARD_TRAIN_QA) failed and R7 was inconclusive. The
search keeps the twin's people (multi5+permute, a fifth of train_people as the validation slice),
model, window, batch 16 and mask rate 0.15, and looks for a recipe under which the masked model fits
its train_people; the chapter then trains both twins with the chosen recipe.

SEARCH SPACE  GRID: pretraining lr {3e-4, 1e-3, 3e-3} x pretraining exposures {500, 2000}, each with
              QA finetuning FINETUNE (100 passes at lr 1e-3: 30 left the masked finetuning loss at
              2.6, and a finetuning step costs ~1/10 of a pretraining one). LONGER: a grid lr at
              6,000 exposures, run only as the stop rule says (the budget's rung).
BUDGET        <= BUDGET_MINUTES CPU minutes of training a run on one thread: `expected_minutes`
              from the cpu run's measured speed (REFERENCE); a run's own minutes are its steps'
              tokens at its measured tokens/s, and a run over budget is not selected.
CRITERION     the highest validation-slice QA accuracy of the final model; ties: the higher
              train_people fit, then the earlier setting. No run of the search scores test_people.
STOP RULE     the grid first; then, while the chosen setting fits < GUARD_TRAIN_QA of its
              train_people and its lr has no LONGER run, that run, and choose again. The search
              ends with the guard met, or at the budget's rung, where the page shows the chosen
              run's curves and calls them flat when train_people QA and validation QA (finetuning)
              and bios memorized (pretraining) each rose by less than FLAT_POINTS over the last
              FLAT_SHARE of their steps.
TEST PEOPLE   scored once, on the chosen setting's final model (the chapter: `study`).
Entry points: `SETTINGS`, `LONGER`, `grid` (smoke: SMOKE_GRID), `recipe_config`, `run_setting` (`kn search r7 SETTING`),
`recipe`, `search_rows`, `selected`, `stop_state`, `next_settings`, `run_search` (`kn search r7 all --jobs N`),
`study` (the chapter's runs), `search_table`, `expected_minutes`.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kn.bidirectional import BidirectionalConfig, run_bidirectional, twins
from kn.data.dataset import run_dataset
from kn.errors import DataError
from kn.extraction import run_suite
from kn.guards import GUARD_TRAIN_QA
from kn.regime import search_processes
from kn.profiles import settings
from kn.results import done, publish, read_json, results_dir, runs_dir, write_json

CHAPTER = "bidirectional"
AUGMENT = "multi5+permute"
PROFILES = ("smoke", "cpu")       # the search is the cpu profile's; smoke is its tiny equivalent for tests
BUDGET_MINUTES = 120
FLAT_POINTS, FLAT_SHARE = 2.0, 0.25
FLAT_CURVES = (("finetune", "train_qa"), ("finetune", "valid_qa"), ("pretrain", "memorized"))
CURVE_POINTS = {"smoke": 4, "cpu": 30}
FINETUNE = {"finetune_exposures": 100, "finetune_lr": 1e-3}
SMOKE = {"exposure_scale": 0.005, "finetune_exposures": 3}    # every setting's tiny equivalent
SMOKE_GRID = ("lr3e-3-x500", "lr3e-3-x2000")   # smoke's grid: the search's code paths (one lr: one LONGER) in tests
# measured: the cpu masked run (book/results/bidirectional/cpu/multi5+permute.json, one thread, a loaded 2-core
# machine) trained 800 pretraining steps (500 exposures) and 450 finetuning steps (30 passes) in 494.5 s; its
# GPT-2 twin's 450 finetuning steps took 23.6 s, which leaves 0.589 s a pretraining step
REFERENCE = {"pretrain_steps_per_exposure": 800 / 500, "pretrain_s_per_step": (494.5 - 23.6) / 800,
             "finetune_steps_per_pass": 450 / 30, "finetune_s_per_step": 23.6 / 450}


def grid(profile: str) -> tuple[str, ...]:
    """The grid the search runs at `profile`: SETTINGS; at smoke, SMOKE_GRID (a test of the code, not a search)."""
    return SMOKE_GRID if profile == "smoke" else tuple(SETTINGS)


def _name(lr: float, exposures: int) -> str:
    return f"lr{lr:.0e}-x{exposures}".replace("e-0", "e-")


SETTINGS = {_name(lr, x): {"lr": lr, "exposures": x, **FINETUNE} for lr in (3e-4, 1e-3, 3e-3) for x in (500, 2000)}
LONGER = {_name(r["lr"], 6000): r | {"exposures": 6000} for r in SETTINGS.values() if r["exposures"] == 2000}
ALL = SETTINGS | LONGER


def recipe(name: str, profile: str) -> dict:
    """The setting's lr, exposures, finetune_exposures and finetune_lr at the profile (smoke: SMOKE's)."""
    if name not in ALL:
        raise DataError(f"setting: got {name!r}; allowed: {', '.join(ALL)}")
    if profile not in PROFILES:
        raise DataError(f"profile: got {profile!r}; allowed for the R7 search: {', '.join(PROFILES)}")
    r = dict(ALL[name])
    if profile == "smoke":
        r |= {"exposures": r["exposures"] * SMOKE["exposure_scale"], "finetune_exposures": SMOKE["finetune_exposures"]}
    return r


def expected_minutes(name: str) -> float:
    """CPU minutes of training a setting on one thread at the cpu profile, from REFERENCE."""
    r, ref = ALL[name], REFERENCE
    return (r["exposures"] * ref["pretrain_steps_per_exposure"] * ref["pretrain_s_per_step"]
            + r["finetune_exposures"] * ref["finetune_steps_per_pass"] * ref["finetune_s_per_step"]) / 60


def recipe_config(name: str, profile: str) -> BidirectionalConfig:
    """The masked model of kn.bidirectional.twins with the setting's recipe and the search's curve."""
    return replace(twins(profile, AUGMENT, 0, recipe(name, profile))[0], curve_points=CURVE_POINTS[profile])


def _root(profile: str) -> Path:
    return runs_dir(CHAPTER, profile) / "r7-search"


def _data(profile: str) -> Path:
    """The search's one dataset (every setting sees the same people), made on first use."""
    return run_dataset(recipe_config(next(iter(SETTINGS)), profile).data, _root(profile) / "data")


def result_path(name: str, profile: str) -> Path:
    return results_dir(CHAPTER, profile) / f"r7-search-{name}.json"


def run_setting(name: str, profile: str) -> dict:
    """Train one setting (resuming an interrupted run of it), score train_people and the validation
    slice (never test_people) and write its row and learning curves to
    results/bidirectional/<profile>/r7-search-<name>.json (read back when done for these settings)."""
    cfg = recipe_config(name, profile)
    folder = _root(profile) / name
    if (record := done(result_path(name, profile), cfg, after=[folder / "finetune" / "finetune.json"])):
        return record["row"]
    r = run_bidirectional(cfg, folder, test=False, data=_data(profile))
    minutes = sum(r["training"][k]["cpu_minutes"] or 0.0 for k in ("pretrain", "finetune"))
    memorized = [p["memorized"] for p in r["curves"]["pretrain"]]
    row = {"setting": name, "lr": cfg.lr, "exposures": cfg.exposures, "finetune_exposures": cfg.finetune_exposures,
           "pretrain_steps": r["training"]["pretrain"]["steps"], "finetune_steps": r["training"]["finetune"]["steps"],
           "cpu_minutes": minutes, "within_budget": minutes <= BUDGET_MINUTES, "pretrain_loss": r["pretrain_loss"],
           "memorized": memorized[-1] if memorized else None,
           "train_qa": r["qa"]["train"]["mean"], "valid_qa": r["qa"]["valid"]["mean"]}
    write_json(result_path(name, profile), config=cfg, seed=cfg.seed, row=row, qa=r["qa"], curves=r["curves"])
    return row


def search_rows(profile: str) -> list[dict]:
    """The rows of the settings run so far, grid then LONGER."""
    return [read_json(p)["row"] for p in (result_path(n, profile) for n in ALL) if p.is_file()]


def selected(profile: str) -> str | None:
    """CRITERION: the best validation-slice accuracy within budget (ties: train_people fit, then the
    earlier setting); None before any ran."""
    rows = [r for r in search_rows(profile) if r["within_budget"] and r["valid_qa"] == r["valid_qa"]]
    order = list(ALL)
    return max(rows, key=lambda r: (r["valid_qa"], r["train_qa"], -order.index(r["setting"])))["setting"] if rows else None


def flat(curves: dict) -> bool:
    """Whether each of FLAT_CURVES rose by less than FLAT_POINTS over the last FLAT_SHARE of its steps."""
    for stage, field in FLAT_CURVES:
        points = [(p["step"], p[field]) for p in curves.get(stage, []) if p[field] is not None]
        if not points:
            return False
        start = points[-1][0] * (1 - FLAT_SHARE)
        tail = [v for step, v in points if step >= start]
        if 100 * (tail[-1] - min(tail)) >= FLAT_POINTS:
            return False
    return True


def stop_state(profile: str) -> str | None:
    """STOP RULE: why the search ended ("guard met", "flat at the budget", "still rising at the
    budget"), or None while it goes on."""
    rows = {r["setting"]: r for r in search_rows(profile)}
    if any(n not in rows for n in grid(profile)) or (name := selected(profile)) is None:
        return None
    if 100 * rows[name]["train_qa"] >= GUARD_TRAIN_QA:
        return "guard met"
    longer = _name(ALL[name]["lr"], 6000)
    if longer not in rows:
        return None
    at_budget = read_json(result_path(longer, profile))["curves"]
    return "flat at the budget" if flat(at_budget) else "still rising at the budget"


def next_settings(profile: str) -> list[str]:
    """What the search runs next: the grid's settings not yet run, else the chosen lr's LONGER run
    while the stop rule says go on, else nothing."""
    rows = {r["setting"] for r in search_rows(profile)}
    if todo := [n for n in grid(profile) if n not in rows]:
        return todo
    if stop_state(profile) is not None:
        return []
    return [_name(ALL[selected(profile)]["lr"], 6000)]


def run_search(profile: str, jobs: int = 1, log=lambda line: None) -> dict:
    """The whole search: next_settings until it is empty, `jobs` runs at a time (jobs > 1: each
    `python -m kn search r7 SETTING` in its own process, its output in runs/.../r7-search/SETTING.log).
    Returns {"selected", "stop", "rows"}."""
    if jobs < 1:
        raise DataError(f"jobs: got {jobs}; allowed: an integer >= 1")
    _data(profile)
    while todo := next_settings(profile):
        if jobs == 1:
            for name in todo:
                run_setting(name, profile)
                log(f"r7 {name}: done")
        else:
            search_processes({f"r7 {n}": (["r7", n, "--profile", profile], _root(profile) / n) for n in todo}, jobs, log)
    return {"selected": selected(profile), "stop": stop_state(profile), "rows": search_rows(profile)}


def study(profile: str, seed: int = 0) -> dict:
    """The chapter's runs: per augmentation of the table's `augments`, the masked model and its GPT-2
    twin (kn.bidirectional.twins), published to results/bidirectional/<profile>/<augment>.json and
    "GPT-2 <augment>.json". Where the table's `search` is set, AUGMENT's twins take the recipe the
    search chose (run first when it has not), and the masked model is the chosen setting's run, its
    final model scored on test_people once. Returns augments (the table's), runs ({augment: {"bert",
    "gpt2", "config"}}) and search (run_search's summary, None without a search)."""
    s = settings(CHAPTER, profile)
    out = {"augments": s["augments"], "runs": {}, "search": None}
    if s["search"]:
        out["search"] = run_search(profile)
    for a in s["augments"]:
        searched = s["search"] and a == AUGMENT
        chosen = recipe(out["search"]["selected"], profile) if searched else None
        bert, gpt2 = twins(profile, a, seed, chosen)
        folder, data = runs_dir(CHAPTER, profile) / a, None
        if searched:
            bert = replace(bert, curve_points=CURVE_POINTS[profile])
            folder = _root(profile) / (out["search"]["selected"] + ("" if seed == 0 else f"-seed{seed}"))
            data = _data(profile) if seed == 0 else None
        g = run_suite(CHAPTER, profile, {f"GPT-2 {a}": gpt2}, progress=False)[f"GPT-2 {a}"]
        published = done(results_dir(CHAPTER, profile) / f"{a}.json", bert)
        if folder.exists() or published is None:        # else: a page re-rendered from its committed result
            run_bidirectional(bert, folder, data=data)
            published = publish(folder / "result.json", CHAPTER, profile, a)
        out["runs"][a] = {"bert": published, "gpt2": g, "config": bert}
    return out


def search_table(profile: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) for kn.display.markdown_table: every setting with its expected cpu minutes and,
    once run, its steps, minutes and end points; the choice marked."""
    ran, chosen = {r["setting"]: r for r in search_rows(profile)}, selected(profile)
    pct = lambda x: "-" if x is None or x != x else f"{100 * x:.1f}%"  # noqa: E731
    rows = []
    for name in ALL:
        r = ran.get(name)
        cells = [f"{r['pretrain_steps']:,} + {r['finetune_steps']:,}", f"{r['cpu_minutes']:.0f}"
                 + ("" if r["within_budget"] else " (over budget)"), pct(r["memorized"]), pct(r["train_qa"]),
                 pct(r["valid_qa"])] if r else ["not run"] + ["-"] * 4
        rows.append([name + (" **chosen**" if name == chosen else ""), f"{expected_minutes(name):.0f}", *cells])
    return ["setting", "expected cpu minutes", "steps (pretrain + finetune)", "cpu minutes", "bios memorized",
            "train_people QA", "validation slice QA"], rows
