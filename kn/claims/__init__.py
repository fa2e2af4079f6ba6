"""The claims table: every claim of book/papers.md beside our measured number and one verdict.

Each claim states its test before any run, in code: a `Rule` (the effect it needs: at least, at
most, or near a value), the guards its measurement must pass (`Check`: e.g. the finetuned model
answers >= 80% of its own train_people, the bios are >= 90% memorized) and the ceiling (the best
the method could score, e.g. the share of held-out values a probe ever saw in training). A
measurement (`Evidence`) carries the estimate with its 95% interval, resampled over people (or the
paper's unit: paragraphs, models). `verdict` is the only function that turns them into a word:

  inconclusive    a guard failed, the ceiling is below what the rule needs, there is no interval,
                  or the interval straddles the rule's threshold: the run could not pass or fail
  reproduced      the whole interval is on the claim's side of the threshold (near: an equivalence
                  test, the whole interval inside the band threshold * (1 +- tolerance); within: the
                  same with the absolute band threshold +- tolerance, e.g. a gap of 0 +- 10 points)
  not reproduced  the whole interval is on the other side (near: wholly outside the band)
  not run         no result file at any profile

Every augmentation, rank and arm is reported, never the best of them. For each chapter the largest
profile with results is used (paper > gpu > cpu > class > smoke), and the table says which.

The engine is kn.claims.rules; each paper's measures (results folder -> Evidence) sit in
kn.claims.part31, part33, chang and xu_chen; this module holds CLAIMS, the rule history and the table.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kn import dynamics_claims, paper
from kn.claims.chang import batch_once, bump_once, dynamics, power_law, power_law_once, stage_gain_once
from kn.claims.part31 import (LORA_MARGIN, bidirectional_gap, gain, lora_gap, mixed_extraction, p_probe_ahead, q_probe_gap,
                              test_accuracy)
from kn.claims.part33 import (CLEAN, DOMAIN, JUNK, capacity_ratio, capacity_slope, gated_gap, llama_law,
                              quantized_kept, variant_ratio)
from kn.claims.rules import Claim, Evidence, NoInterval, Rule, load, to_decide, verdict
from kn.claims.xu_chen import low_rank_gap, mlp_gap, rank1
from kn.display import markdown_table
from kn.profiles import PROFILES
from kn.results import results_dir


def latest_profile(chapter: str) -> str | None:
    """The largest profile whose results folder for `chapter` exists."""
    for profile in reversed(PROFILES):
        folder = results_dir(chapter, profile)
        if folder.is_dir() and any(folder.iterdir()):
            return profile
    return None


CLAIMS = [
    Claim("Part 3.1, R1", "Mixed training extracts knowledge of held-out people (bioS single)",
          f"{paper.PART31_MEAN['R1 mixed, bioS single']}%", "mixed_training", mixed_extraction, Rule("at_least", 50)),
    Claim("Part 3.1, R2", "Pretrain on bioS single, then QA finetune: held-out people mostly fail",
          f"{paper.PART31_MEAN['R2 pretrain + finetune, bioS single']}%", "augmentation", test_accuracy("single"),
          Rule("at_most", 20)),
    Claim("Part 3.1, R3", "Knowledge augmentation (multi5+permute) makes it extractable after finetuning",
          f"{paper.PART31_MEAN['R3 multi5+permute, pretrain + finetune']}%", "augmentation",
          test_accuracy("multi5+permute"), Rule("at_least", 50)),
    # issue 22: written before any run of the hard variant; the rule is R3's (held-out >= 50%), since the
    # paper's claim is about knowledge augmentation, not about one generator's sentences
    Claim("Part 3.1, R3 (hard bios)", "Knowledge augmentation (multi5+permute) works on harder bioS too: values "
          "mid-sentence, they/their after He/She, filler sentences (kn.data.bios variant 'hard')",
          f"{paper.PART31_MEAN['R3 multi5+permute, pretrain + finetune']}%", "augmentation",
          test_accuracy("multi5+permute hard"), Rule("at_least", 50)),
    Claim("Part 3.1, R3 (LoRA)", "LoRA finetuning extracts about as well as full finetuning (multi5+permute)",
          "similar to full finetune", "augmentation", lora_gap, Rule("within", 0, " points", LORA_MARGIN)),
    Claim("Part 3.1, R4", "P-probing: multi5+permute stores every attribute before its value is written; single does not",
          "~100% at every position vs only at or after its own", "probing", p_probe_ahead,
          Rule("at_least", 30, " points")),
    Claim("Part 3.1, R5", "Q-probing from the name: near chance for single, high for multi5+permute",
          "0.2% vs 73-99.7%", "probing", q_probe_gap, Rule("at_least", 30, " points")),
    Claim("Part 3.1, R6", "Celebrities with augmented bios lift a plain minority",
          f"{paper.CELEBRITY['single'][0]}% -> {paper.CELEBRITY['single'][1]}%", "celebrity",
          gain("minority + celebrities", "minority alone", "minority accuracy"), Rule("at_least", 30, " points")),
    Claim("Part 3.1, R7", "A bidirectional (masked-LM) model extracts far worse than GPT-2 at equal budget",
          "<= ~40% vs ~97%", "bidirectional", bidirectional_gap, Rule("at_least", 20, " points")),
    Claim("Part 3.3, R4", "At 100 exposures GPT-2 stores about 1 bit per parameter",
          f"~{paper.BITS_PER_PARAM[100]:g} bits/param", "capacity", capacity_ratio(100),
          Rule("near", paper.BITS_PER_PARAM[100], " bits/param", 0.3)),
    Claim("Part 3.3, R1", "At 1000 exposures GPT-2 stores about 2 bits per parameter",
          f"~{paper.BITS_PER_PARAM[1000]:g} bits/param", "capacity", capacity_ratio(1000),
          Rule("near", paper.BITS_PER_PARAM[1000], " bits/param", 0.3)),
    Claim("Part 3.3, R1", "Bits grow in proportion to parameters (log-log slope 1) at 1000 exposures",
          "bits = 2 x params", "capacity", capacity_slope, Rule("near", 1.0, "", 0.2)),
    Claim("Part 3.3, R5", "At 1000 exposures the gated MLP (LLaMA) also stores ~2 bits per parameter",
          "~2 bits/param each", "capacity", llama_law,
          Rule("near", 2, " bits/param", 0.3)),
    Claim("Part 3.3, R6-7", "At 100 exposures the gated MLP (LLaMA) stores 1.3x less than GPT-2", "1.3x",
          "capacity", gated_gap, Rule("at_least", 1.15, "x")),
    Claim("Part 3.3, R8", "int8 quantization keeps the stored bits", "2 of 2 bits/param", "capacity",
          quantized_kept(8), Rule("at_least", 90)),
    Claim("Part 3.3, R8", "int4 quantization loses most of them", f"~{paper.INT4_BITS_PER_PARAM:g} of 2 bits/param",
          "capacity", quantized_kept(4), Rule("at_most", 50)),
    Claim("Part 3.3, R10-11", "Junk data (7 junk : 1 useful token) cuts capacity ~20x at 100 exposures", "~20x",
          "capacity", variant_ratio(CLEAN, JUNK, "clean over junk bits"), Rule("at_least", 5, "x")),
    Claim("Part 3.3, R12", "A domain token before useful data recovers most of it", "20x -> 2x",
          "capacity", variant_ratio(DOMAIN, JUNK, "domain token over junk bits"), Rule("at_least", 5, "x")),
    Claim("Chang et al.", "Each exposure to a fact lifts its log-probability above never-injected controls "
          "(mean over the scenarios)",
          "bump, then decay", "dynamics", dynamics(dynamics_claims.bump), Rule("at_least", 0.0, " nats")),
    Claim("Chang et al.", "More pretraining does not raise effectivity (late vs early base, mean over the scenarios)",
          "no increase",
          "dynamics", dynamics(dynamics_claims.stage_gain), Rule("at_most", 0.05, " nats")),
    Claim("Chang et al.", "Forgetting follows a power law (linear in log t), better than linear or exponential "
          "(duplicated and paraphrased, each)",
          "R ~ -a log t", "dynamics", power_law, Rule("at_least", 2.0, " AIC")),
    Claim("Chang et al.", "Duplicated injection is forgotten faster than paraphrased", "faster decay",
          "dynamics", dynamics(dynamics_claims.duplicated_forgets_faster), Rule("at_least", 0.0, "")),
    Claim("Chang et al.", "Larger batches forget more slowly (duplicated and paraphrased, each)", "batch 2048 vs 128",
          "dynamics", dynamics(dynamics_claims.batch_forgets_slower), Rule("at_least", 0.0, "")),
    Claim("Xu & Chen", "One layer of attention + MLP extracts held-out facts; attention alone does not",
          "MLP needed", "onelayer", mlp_gap, Rule("at_least", 20, " points")),
    Claim("Xu & Chen", "Low-rank finetuning extracts about as well as full finetuning (every rank)", "holds for both",
          "onelayer", low_rank_gap, Rule("at_least", -10, " points")),
    Claim("Xu & Chen", "The finetuning update is dominated by one direction", "rank-1 dominated",
          "onelayer", rank1, Rule("at_least", 50)),
]


@dataclass(frozen=True)
class RuleChange:
    """A rule, guard or threshold changed after a result of its claim existed: the claims page shows
    it with the verdict the current evidence gets under the old test."""
    source: str                      # Claim.source
    statement: str                   # the start of Claim.statement (several claims share a source)
    date: str
    change: str                      # old -> new, in words
    old_rule: Rule | None = None     # the rule before; None: the rule did not change
    had_guards: bool = True          # False: the guards were added by this change
    same_quantity: bool = True       # False: the old test measured another quantity (no verdict to compute)
    old_measure: Callable[[Path], Evidence] | None = None   # the old test's quantity, when it is still measured


INTERVALS = "point estimate -> 95% interval"        # 2026-12-01: every rule moved from estimates to intervals
OTHER = f"{INTERVALS}, and another quantity"

RULE_CHANGES = [
    RuleChange("Part 3.1, R1", "Mixed training", "2026-12-01", f"threshold 70% -> 50% ({INTERVALS})", Rule("at_least", 70)),
    RuleChange("Part 3.1, R3", "Knowledge augmentation", "2026-12-01", f"threshold 80% -> 50% ({INTERVALS})",
               Rule("at_least", 80)),
    RuleChange("Part 3.1, R3 (LoRA)", "LoRA finetuning", "2026-12-01", f"threshold 80% -> 50% ({INTERVALS})",
               Rule("at_least", 80), old_measure=test_accuracy("multi5+permute LoRA")),
    RuleChange("Part 3.1, R3 (LoRA)", "LoRA finetuning", "2026-12-04",
               f"LoRA held-out >= 50% -> LoRA minus full finetuning inside 0 +- {LORA_MARGIN:g} points",
               Rule("at_least", 50), old_measure=test_accuracy("multi5+permute LoRA")),
    RuleChange("Part 3.1, R5", "Q-probing", "2026-12-01", "threshold 50 -> 30 points", Rule("at_least", 50, " points")),
    *[RuleChange("Part 3.1, R" + r, start, "2026-12-04", "probe: a full linear head fit on train_people, ceiling the "
                 "share of test values seen in its training -> a low-rank head chosen on the validation slice "
                 "(kn.probe_select), guards on its people, ceiling its test accuracy at the value's own position",
                 same_quantity=False) for r, start in (("4", "P-probing"), ("5", "Q-probing"))],
    *[RuleChange("Xu & Chen", start, "2026-12-01", "guards added (train_people QA >= 80%, bios memorized >= 90%)",
                 had_guards=False) for start in ("One layer", "Low-rank", "The finetuning")],
    RuleChange("Part 3.1, R7", "A bidirectional", "2026-12-01",
               f"masked model <= 40% -> GPT-2 minus masked >= 20 points ({OTHER})", same_quantity=False),
    RuleChange("Part 3.3, R8", "int4", "2026-12-01", f"15-55% kept -> <= 50% kept ({INTERVALS})", same_quantity=False),
    *[RuleChange("Chang et al.", start, "2026-12-01", f"{change} ({OTHER})", same_quantity=False) for start, change in
      (("Each exposure", "effectivity >= 0.05 nats -> minus never-injected controls >= 0"),
       ("More pretraining", "late / early effectivity <= 1.2 -> late - early <= 0.05 nats"),
       ("Forgetting", "R^2 of a decaying log-t line >= 0.5 -> AIC of log t over linear and exp by >= 2"),
       ("Duplicated", "disjoint decay intervals (score 2) -> decay difference >= 0"),
       ("Larger batches", "disjoint decay intervals (score 2) -> decay difference >= 0"))],
    *[RuleChange("Chang et al.", start, "2026-12-04", change, old_measure=measure) for start, change, measure in
      (("Each exposure", "the once scenario -> the mean over once, duplicated and paraphrased", bump_once),
       ("More pretraining", "the once scenario -> the mean over once, duplicated and paraphrased", stage_gain_once),
       ("Forgetting", "AIC lead of the once scenario (a point) -> the smaller of duplicated's and paraphrased's "
                      "(bootstrap intervals); decay b > 0 in both", power_law_once),
       ("Larger batches", "the once scenario -> the smaller of duplicated's and paraphrased's", batch_once))],
    RuleChange("Part 3.3, R4", "At 100", "2026-12-04", "near: interval meets the band -> interval inside the band",
               Rule("meets", paper.BITS_PER_PARAM[100], " bits/param", 0.3)),
    RuleChange("Part 3.3, R1", "At 1000", "2026-12-04", "near: interval meets the band -> interval inside the band",
               Rule("meets", paper.BITS_PER_PARAM[1000], " bits/param", 0.3)),
]


def _evidence(measure: Callable[[Path], Evidence], folder: Path) -> Evidence | None:
    try:
        return measure(folder)
    except (FileNotFoundError, KeyError, NoInterval):
        return None


def rule_history() -> list[dict]:
    """One row per RULE_CHANGES entry: claim, date, change, the verdict now and under the old test,
    both on the claim's current evidence (its chapter's largest profile with results)."""
    rows = []
    for change in RULE_CHANGES:
        claim = next(c for c in CLAIMS if c.source == change.source and c.statement.startswith(change.statement))
        row = {"source": claim.source, "claim": claim.statement, "date": change.date, "change": change.change,
               "now": "not run", "before": "not run"}
        at = latest_profile(claim.chapter)
        e, old = (_measured(m, claim.chapter, at) for m in (claim.measure, change.old_measure or claim.measure))
        if e is not None:
            row["now"] = verdict(e, claim.rule)[0]
        if old is not None:
            old = old if change.had_guards else Evidence(old.estimate, old.text, (), old.ceiling, old.ceiling_text)
            row["before"] = verdict(old, change.old_rule or claim.rule)[0] if change.same_quantity else \
                "not comparable (another quantity)"
        rows.append(row)
    return rows


def _measured(measure, chapter: str, at: str | None) -> Evidence | None:
    """measure's evidence at profile `at`, or None (no measure, no profile, or not measurable there)."""
    if measure is None or at is None:
        return None
    try:
        return measure(results_dir(chapter, at))
    except (FileNotFoundError, KeyError, NoInterval):
        return None


def history_markdown(rows: list[dict]):
    return markdown_table(["claim", "changed", "change", "verdict now", "under the old test"],
                          [[f"{r['source']}: {r['claim']}", r["date"], r["change"], f"**{r['now']}**", r["before"]]
                           for r in rows])


def claims_table(chapter: str | None = None, profile: str | None = None) -> list[dict]:
    """One row per claim (of `chapter`, or all): source, claim, paper, ours, rule, guards, ceiling,
    profile, verdict, why. Each chapter's largest profile with results, or `profile` when given
    (a chapter shows the verdicts of the run it just made)."""
    rows = []
    for c in CLAIMS:
        if chapter is not None and c.chapter != chapter:
            continue
        at = latest_profile(c.chapter) if profile is None else profile
        row = {"source": c.source, "claim": c.statement, "paper": c.paper_value, "chapter": c.chapter,
               "profile": at, "ours": "", "rule": c.rule.text(), "guards": "", "ceiling": "",
               "verdict": "not run", "why": "no result file", "decide": ""}
        if at is not None and results_dir(c.chapter, at).is_dir():
            try:
                e = c.measure(results_dir(c.chapter, at))
                row.update(ours=e.text, guards="; ".join(g.text() for g in e.guards) or "-", ceiling=e.ceiling_text)
                row["verdict"], row["why"] = verdict(e, c.rule)
                row["decide"] = to_decide(e, c.rule)
            except NoInterval as err:
                row.update(ours=f"no interval: {err}", verdict="inconclusive", why=str(err), decide="a run that gives an interval")
            except (FileNotFoundError, KeyError) as err:   # result file or entry missing at this profile
                what = f"no {Path(err.filename).name} at this profile" if getattr(err, "filename", None) else str(err)
                row.update(ours=f"not measured: {what}", why=f"not measured: {what}")
        else:
            row["profile"] = None
        rows.append(row)
    return rows


def claims_markdown(rows: list[dict]):
    """The claims table as Markdown for a notebook to display: the verdict beside the claim, the test
    (rule, guards, ceiling, profile) in one last column, so that it reads at 1280 px without
    scrolling sideways."""
    return markdown_table(["claim", "verdict", "ours (95% interval); the paper", "test"],
                          [[f"{r['source']}: {r['claim']}", f"**{r['verdict']}** ({r['why']})",
                            f"{r['ours'] or '-'}; paper: {r['paper']}", f"rule: {r['rule']}; guards: {r['guards'] or '-'}; ceiling: {r['ceiling'] or '-'}; "
                                        f"profile: {r['profile'] or '-'}"] for r in rows])

def undecided_markdown(rows: list[dict]):
    """The inconclusive rows of a claims table with their reason and what would decide each
    (kn.claims.rules.to_decide), as Markdown; a line saying so when none is inconclusive."""
    left = [[f"{r['source']}: {r['claim']}", r["why"], r["decide"]] for r in rows if r["verdict"] == "inconclusive"]
    return markdown_table(["claim", "why inconclusive", "what would decide it"], left) if left else \
        markdown_table(["claim"], [["every row is decided"]])


def seeds_needed_table(profile: str | None = None):
    """Per Chang et al. claim (the dynamics chapter at `profile`, default its largest with results): our
    number, the rule's threshold, the seeds the run used and those its interval would need to clear the
    threshold (kn.dynamics_claims.seeds_needed), as Markdown."""
    at = profile or latest_profile("dynamics")
    folder = results_dir("dynamics", at)
    n_seeds = len(load(folder, "dynamics")["seeds"])
    rows = []
    for c in (c for c in CLAIMS if c.chapter == "dynamics"):
        e = _evidence(c.measure, folder)
        need = None if e is None else dynamics_claims.seeds_needed(e.estimate, c.rule.threshold, n_seeds)
        number = "-" if e is None else f"{e.estimate.value:+.3g} [{e.estimate.low:+.3g}, {e.estimate.high:+.3g}]"
        rows.append([c.statement, number, c.rule.text(), str(n_seeds), "-" if need is None else str(need)])
    return markdown_table(["claim", "ours (95% interval)", "rule", "seeds run", "seeds needed"], rows)
