"""Pooled paragraphs, intervals and summaries of the acquisition-dynamics runs (book/papers.md, Chang et al.).

A `Pool` is one scenario and probe kind over every seed's run, one column per paragraph (the mean over
its probes), injected paragraphs and controls apart (`make_pools`, from kn.trajectories' runs).
Intervals (`bootstrap`): each of n_boot resamples draws the seeds with replacement, then within each
drawn seed its paragraphs with replacement (injected and controls apart), and recomputes the statistic
from them: the unit is a paragraph, never a step. value = the estimate from all paragraphs; low, high =
the 2.5 and 97.5 percentiles. Two runs on the same paragraphs (early and late base; batch B and
batch_factor x B) are compared on the same resamples.
`summarize` and the comparisons give the SUMMARY, F and I of kn.dynamics' result files; the tables show
them as Markdown.
`pooled` and `pooled_difference` average a statistic over scenarios (kn.dynamics_claims' pooled claims);
`edge_peaks` names the mean bumps that peak at the edge of their t_LAM window.
Entry points: `Pool`, `make_pools`, `paragraph_means`, `forgetting_curve`, `bootstrap_draws`, `interval`,
`bootstrap`, `summarize_pool`, `summarize`, `mean_curve_lam`, `edge_peaks`, `pooled`, `pooled_difference`,
`differences`, `early_vs_late`, `duplicated_vs_paraphrased`,
`interval_text`, `effectivity_table`, `forgetting_table`, `difference_table`.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from kn.data.injection import PROBE_KINDS
from kn.display import markdown_table
from kn.dynamics_config import CONTROL, N_BOOT, SCENARIOS, DynamicsConfig, injection_steps
from kn.errors import DataError
from kn.forgetting import LAWS, MIN_POINTS, effectivity, fit_forgetting, fit_log, local_max, retainability
from kn.trajectories import Trajectories, common_steps



# ----------------------------------------------------------------------------- pooled paragraphs and intervals


@dataclass
class Pool:
    """One scenario and probe kind over every seed's run, one column per paragraph (the mean over its
    probes): l [S, N] and E at each injection [I, N] of the injected paragraphs, the same for the
    controls (control_l [S, M], control_E at the scenario's injection steps); seed [N] and
    control_seed [M] name each column's run; t_lam [I x probes]: t_LAM - t_i of the injected probes."""
    steps: np.ndarray
    inj: tuple
    window: int
    tokens_per_step: int
    l: np.ndarray
    E: np.ndarray
    seed: np.ndarray
    control_l: np.ndarray
    control_E: np.ndarray
    control_seed: np.ndarray
    t_lam: np.ndarray


def paragraph_means(traj: Trajectories, group: str, kind: str, inj: tuple, window: int):
    """(l [S, n], E [I, n], t_LAM - t_i [I x p]) of one group's paragraphs in one run: E per probe at
    each injection step in `inj`, then every column averaged over a paragraph's probes."""
    mask = (traj.scenario == group) & (traj.kind == kind)
    l, para = traj.logprob[:, mask], traj.paragraph[mask]
    onehot = para[:, None] == np.unique(para)[None, :]
    avg = onehot / onehot.sum(axis=0)                                                  # [p, n]
    E = np.stack([effectivity(traj.steps, l, t, window) for t in inj])                 # [I, p]
    lam = np.concatenate([local_max(traj.steps, l, t, window) - t for t in inj])
    return l @ avg, E @ avg, lam


def make_pools(trajs: dict[int, Trajectories], cfg: DynamicsConfig) -> dict[tuple[str, str], Pool]:
    """(scenario, kind) -> its Pool over the runs `trajs` (seed -> trajectories of one stage)."""
    steps = common_steps(list(trajs.values()))
    return {(s, k): _pool(trajs, steps, s, k, inj, cfg) for s, inj in injection_steps(cfg).items() for k in PROBE_KINDS}


def _pool(trajs: dict, steps: np.ndarray, scenario: str, kind: str, inj: tuple, cfg: DynamicsConfig) -> Pool:
    part = {g: [paragraph_means(trajs[seed], g, kind, inj, cfg.lam_window) for seed in trajs] for g in (scenario, CONTROL)}
    label = {g: np.concatenate([np.full(p[0].shape[1], seed) for seed, p in zip(trajs, part[g])]) for g in part}
    l, E = ({g: np.hstack([p[i] for p in part[g]]) for g in part} for i in (0, 1))
    return Pool(steps, inj, cfg.lam_window, cfg.batch_size * cfg.window, l[scenario], E[scenario], label[scenario],
                l[CONTROL], E[CONTROL], label[CONTROL], np.concatenate([p[2] for p in part[scenario]]))


def forgetting_curve(pool: Pool, curve: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t, R) of a mean curve [S] after the pool's last injection, at the steps where it was measured."""
    steps, inj, w = pool.steps, pool.inj, pool.window
    t, R = retainability(steps, curve, local_max(steps, curve, inj[-1], w), inj[0], int(steps[-1] - (inj[-1] + w)))
    ok = np.isfinite(R)
    return t[ok], R[ok]


def _decay(pool: Pool, curve: np.ndarray) -> float:
    """b of the log law fitted to the curve's R (NaN with fewer than MIN_POINTS points)."""
    t, R = forgetting_curve(pool, curve)
    return fit_log(t, R)["b"] if len(t) >= MIN_POINTS else float("nan")


def _aic_lead(pool: Pool, curve: np.ndarray) -> float:
    """AIC of the best other law minus the log law's on the curve's R (> 0: the log law fits best; NaN
    with fewer than MIN_POINTS points)."""
    t, R = forgetting_curve(pool, curve)
    if len(t) < MIN_POINTS:
        return float("nan")
    aic = {law: f["aic"] for law, f in fit_forgetting(t, R)["fits"].items()}
    return min(v for law, v in aic.items() if law != "log") - aic["log"]


STATISTICS = {   # name -> (pool, injected columns, control columns) -> number
    "effectivity": lambda p, i, j: p.E[:, i].mean(),
    "control_effectivity": lambda p, i, j: p.control_E[:, j].mean(),
    "effectivity_minus_control": lambda p, i, j: p.E[:, i].mean() - p.control_E[:, j].mean(),
    "forgetting": lambda p, i, j: _decay(p, p.l[:, i].mean(axis=1)),
    "forgetting_minus_control": lambda p, i, j: _decay(p, p.l[:, i].mean(axis=1) - p.control_l[:, j].mean(axis=1)),
    "aic_lead_minus_control": lambda p, i, j: _aic_lead(p, p.l[:, i].mean(axis=1) - p.control_l[:, j].mean(axis=1)),
}


def bootstrap_draws(labels: list[np.ndarray], n_boot: int, seed: int = 0) -> list[list[np.ndarray]]:
    """n_boot two-stage resamples of units labelled by their group (a paragraph by its run's seed):
    each draws the groups with replacement, then within each drawn group as many of its units, with
    replacement, for each array of labels apart (injected and control paragraphs); returns per
    resample one index array per array of labels. The same labels and seed give the same resamples."""
    rng = np.random.default_rng([seed, 13])
    names = np.unique(np.concatenate(labels))
    members = [{g: np.flatnonzero(lab == g) for g in names} for lab in labels]
    out = []
    for _ in range(n_boot):
        drawn = rng.choice(names, size=len(names))
        out.append([np.concatenate([rng.choice(m[g], size=len(m[g])) for g in drawn]) for m in members])
    return out


@lru_cache(maxsize=4)
def _draws(seed: tuple, control_seed: tuple, n_boot: int) -> list[list[np.ndarray]]:
    return bootstrap_draws([np.array(seed), np.array(control_seed)], n_boot)


def _number(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def interval(value: float, samples) -> dict:
    """{"value", "low", "high"}: the estimate and the 2.5 / 97.5 percentiles of its finite resamples;
    all None when the estimate itself is undefined."""
    s = np.asarray(samples, float)
    s = s[np.isfinite(s)]
    low, high = np.percentile(s, [2.5, 97.5]) if len(s) and _number(value) is not None else (None, None)
    return {"value": _number(value), "low": _number(low), "high": _number(high)}


def bootstrap(pools: tuple[Pool, ...], name: str, n_boot: int = N_BOOT, combine=None) -> tuple[dict, float]:
    """(interval, share of resamples where it is defined) of combine(statistic `name` of each pool) --
    pools over the same paragraphs, resampled alike; combine defaults to the one pool's value."""
    first, stat = pools[0], STATISTICS[name]
    if any(not (np.array_equal(p.seed, first.seed) and np.array_equal(p.control_seed, first.control_seed))
           for p in pools):
        raise DataError("pools: the runs compared hold different paragraphs; compare runs of the same seeds")
    combine = combine or (lambda v: v)
    every = (slice(None), slice(None))
    draws = _draws(tuple(first.seed), tuple(first.control_seed), n_boot)
    samples = [combine(*(stat(p, i, j) for p in pools)) for i, j in draws]
    return interval(combine(*(stat(p, *every) for p in pools)), samples), float(np.mean(np.isfinite(samples)))


# ----------------------------------------------------------------------------- summaries


def _forgetting(pool: Pool, curve: np.ndarray, name: str, n_boot: int) -> dict | None:
    t, R = forgetting_curve(pool, curve)
    if len(t) < MIN_POINTS:
        return None
    f = fit_forgetting(t, R)
    x = f["fits"]["log"]["x_intercept"]
    f["fits"]["log"]["x_intercept_tokens"] = None if x is None else x * pool.tokens_per_step
    decay, valid = bootstrap((pool,), name, n_boot)
    return f | {"decay_b": decay, "valid": valid, "t": t.tolist(), "R": R.tolist()}


def summarize_pool(pool: Pool, n_boot: int = N_BOOT) -> dict:
    """One scenario and kind: effectivity (injected, control, their difference) with intervals, E per
    injection, t_LAM - t_i, and the forgetting laws after the last injection (kn.dynamics docstring, SUMMARY)."""
    out = {name: bootstrap((pool,), name, n_boot)[0]
           for name in ("effectivity", "control_effectivity", "effectivity_minus_control")}
    lam = pool.t_lam
    out |= {"per_injection": pool.E.mean(axis=1).tolist(),
            "t_lam": {"mean": float(lam.mean()), "median": float(np.median(lam)), "max": int(lam.max()),
                      "window": pool.window, "at_edge": float(np.mean(lam == pool.window)), "mean_curve": mean_curve_lam(pool)}}
    mean, control = pool.l.mean(axis=1), pool.control_l.mean(axis=1)
    return out | {"forgetting": _forgetting(pool, mean, "forgetting", n_boot),
                  "forgetting_minus_control": _forgetting(pool, mean - control, "forgetting_minus_control", n_boot)}


def mean_curve_lam(pool: Pool) -> list[int]:
    """t_LAM - t_i of the pool's mean curve (injected paragraphs) at each injection: the bump's peak."""
    mean = pool.l.mean(axis=1)
    return [int(local_max(pool.steps, mean, t, pool.window) - t) for t in pool.inj]


def edge_peaks(summary: dict) -> list[str]:
    """"scenario/kind/injection k" for every mean-curve bump of a SUMMARY that peaks at the last step of
    its t_LAM window (`window` steps): the window may cut the bump, and lam_window should be wider."""
    return [f"{s}/{k}/injection {i}" for s, kinds in summary.items() for k, v in kinds.items()
            for i, lam in enumerate(v["t_lam"]["mean_curve"]) if lam >= v["t_lam"]["window"]]


def pooled(pools: dict, kind: str, scenarios: tuple, name: str, n_boot: int = N_BOOT) -> dict:
    """Interval of the mean over `scenarios` of statistic `name` (one kind, one run: the scenarios'
    paragraphs differ but share the runs and the controls, so their seeds are resampled together)."""
    return bootstrap(tuple(pools[s, kind] for s in scenarios), name, n_boot, lambda *v: float(np.mean(v)))[0]


def pooled_difference(a: dict, b: dict, kind: str, scenarios: tuple, name: str, n_boot: int = N_BOOT) -> dict:
    """Interval of the pooled statistic of run b minus run a (the same paragraphs, resampled alike)."""
    n = len(scenarios)
    both = tuple(p[s, kind] for p in (a, b) for s in scenarios)
    return bootstrap(both, name, n_boot, lambda *v: float(np.mean(v[n:]) - np.mean(v[:n])))[0]


def summarize(pools: dict[tuple[str, str], Pool], n_boot: int = N_BOOT) -> dict:
    """scenario -> kind -> summarize_pool."""
    out = defaultdict(dict)
    for (s, k), pool in pools.items():
        out[s][k] = summarize_pool(pool, n_boot)
    return dict(out)


def differences(a: dict, b: dict, names: tuple, n_boot: int = N_BOOT) -> dict:
    """scenario -> kind -> name -> interval of statistic(b) - statistic(a), pools a and b on the same paragraphs."""
    out = defaultdict(dict)
    for key in a:
        out[key[0]][key[1]] = {n: bootstrap((a[key], b[key]), n, n_boot, lambda x, y: y - x)[0] for n in names}
    return dict(out)


def duplicated_vs_paraphrased(pools: dict, n_boot: int = N_BOOT) -> dict:
    """kind -> name -> interval of duplicated minus paraphrased (effectivity, forgetting, and both minus
    control): their paragraphs differ but share the runs, so the seeds are resampled together."""
    names = ("effectivity", "effectivity_minus_control", "forgetting", "forgetting_minus_control")
    return {k: {n: bootstrap((pools["duplicated", k], pools["paraphrased", k]), n, n_boot, lambda d, p: d - p)[0]
                for n in names} for k in PROBE_KINDS}


def early_vs_late(early: dict, late: dict, n_boot: int = N_BOOT) -> dict:
    """scenario -> kind -> effectivity and effectivity_minus_control: {"early", "late", "late_minus_early"}."""
    names = ("effectivity", "effectivity_minus_control")
    diff, out = differences(early, late, names, n_boot), defaultdict(dict)
    for (s, k) in early:
        out[s][k] = {n: {"early": bootstrap((early[s, k],), n, n_boot)[0], "late": bootstrap((late[s, k],), n, n_boot)[0],
                         "late_minus_early": diff[s][k][n]} for n in names}
    return dict(out)


# ----------------------------------------------------------------------------- tables


def interval_text(iv: dict | None) -> str:
    """An interval as "value [low, high]"; blank where undefined."""
    if not iv or iv["value"] is None:
        return ""
    bounds = "" if iv["low"] is None else f" [{iv['low']:.3g}, {iv['high']:.3g}]"
    return f"{iv['value']:.3g}{bounds}"


def effectivity_table(stages: dict, scenarios=SCENARIOS):
    """Effectivity of the injected paragraphs, of the controls and their difference (nats, 95% interval),
    one row per stage, scenario and probe kind, as Markdown."""
    names = ("effectivity", "control_effectivity", "effectivity_minus_control")
    rows = [[stage, s, k] + [interval_text(summary[s][k][n]) for n in names]
            for stage, summary in stages.items() for s in scenarios for k in PROBE_KINDS]
    return markdown_table(["base", "scenario", "kind", "E injected", "E control", "E injected - control"], rows)


def forgetting_table(summaries: dict, key: str = "forgetting", scenarios=SCENARIOS):
    """The forgetting laws per label (a stage, a batch size), scenario and kind: AIC of each law, the best
    and its lead, the log law's decay b (95% interval) and t*, as Markdown; blank where there is no fit."""
    rows = []
    for label, summary in summaries.items():
        for s in scenarios:
            for k in PROBE_KINDS:
                f = summary[s][k][key]
                rows.append([label, s, k] + ([""] * 6 if f is None else _law_cells(f)))
    return markdown_table(["run", "scenario", "kind", "AIC log", "AIC linear", "AIC exp", "lowest AIC by",
                           "decay b (log law)", "t* (steps)"], rows)


def _law_cells(f: dict) -> list[str]:
    t_star = f["fits"]["log"]["x_intercept"]
    return [*(f"{f['fits'][law]['aic']:.1f}" for law in LAWS), f"{f['best']} by {f['delta_aic']:.1f}",
            interval_text(f["decay_b"]), "" if t_star is None else f"{t_star:.3g}"]


def difference_table(diffs: dict, scenarios=SCENARIOS):
    """A comparison of two runs (early_vs_late or small_minus_large): one row per scenario and kind, one
    column per statistic (its intervals), as Markdown."""
    first = diffs[scenarios[0]][PROBE_KINDS[0]]
    cols = [(n, sub) for n, v in first.items() for sub in (v if "value" not in v else [None])]
    rows = [[s, k] + [interval_text(diffs[s][k][n] if sub is None else diffs[s][k][n][sub]) for n, sub in cols]
            for s in scenarios for k in PROBE_KINDS]
    return markdown_table(["scenario", "kind"] + [n if sub is None else f"{n}: {sub}" for n, sub in cols], rows)
