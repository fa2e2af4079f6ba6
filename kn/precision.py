"""Precision, attention and compilation of a training run, chosen by the machine (issue 27).

A run's `precision` is auto | fp32 | bf16 and its `attention` auto | sdpa | eager. "auto" keeps
every candidate the machine can run: bf16 autocast only where the CPU has bf16 instructions
(avx512_bf16 or amx_bf16, kn.results.cpu_info) or on a GPU, and both attention kernels. More than
one candidate: a few steps of the run's own model, on its first batch, are timed in turn (A, B, C,
A, B, C, ...: load on a shared machine hits all alike) on copies of the model, so that the run
itself and torch's random state are untouched, and the fastest wins; fp32 with SDPA (what kn ran
before) unless another is MARGIN faster. Then, where the run leaves compilation open (`compile`
"auto", kn.train.compile_setting) and the run is expected to last COMPILE_MIN_S eager, every
candidate is timed compiled against the eager winner the same way, in rounds of ROUND_S (a few-ms
step is noisy one by one, and the eager winner need not win compiled: bf16 steps of the capacity
models, a few ms each, ran 1.2-2.7x slower than fp32 compiled): a compiled step runs torch.compile's
forward and backward and AdamW's fused kernel. One measurement per model shape, batch and thread
count in a process. On a GPU, auto is bf16 with SDPA (fused kernels), not measured. The choice, with
its reason and timings, goes into train.json, the checkpoint and (kn.results.hardware) the provenance
of every result the process writes; a resumed run keeps its checkpoint's choice, so it continues
bit-exactly. Curves are deterministic per precision (and compilation), not across them.
Entry points: `Precision`, `choose`, `check_setting`, `set_attention`, `compiled_model`.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from kn.errors import DataError
from kn.results import cpu_info, record_precision

PRECISIONS = ("auto", "fp32", "bf16")
ATTENTIONS = ("auto", "sdpa", "eager")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MARGIN = 1.05          # another candidate replaces fp32 + SDPA only when >= 5% faster: not on timing noise
ROUNDS = 3             # timed rounds per candidate, after one warm-up step: one step a round, but
ROUND_S = 0.05         # compiled, as many steps as fill this many seconds (a small model's few-ms steps
                       # are noisy one by one)
COMPILE_MIN_S = 600    # compile="auto": runs expected to take this long eager are timed compiled; compiling a
                       # candidate costs 3-60 s here (up to four: fp32/bf16 x sdpa/eager) and gave 1.3-1.8x a
                       # step at batch 2 on the capacity models and 1.4x on Part 3.1's (benchmarks/steps.py)
_CHOSEN: dict = {}     # _where() + candidates and settings [+ compile] -> Precision; ("eager", ...) -> s/step


@dataclass(frozen=True)
class Precision:
    dtype: str                                  # fp32 | bf16 (autocast; weights and optimizer stay fp32)
    attention: str                              # sdpa | eager
    reason: str
    seconds_per_step: dict = field(default_factory=dict)   # "bf16+eager" -> median measured s/step
    compiled: bool = False                      # torch.compile'd forward/backward and fused AdamW

    @property
    def name(self) -> str:
        return f"{self.dtype}+{self.attention}" + ("+compiled" if self.compiled else "")

    def autocast(self, device):
        """The autocast context of this precision on `device` (a no-op in fp32)."""
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=self.dtype == "bf16")

    def record(self) -> dict:
        return asdict(self)


def check_setting(name: str, value) -> None:
    """DataError unless `value` is allowed for `name` (precision | attention)."""
    allowed = {"precision": PRECISIONS, "attention": ATTENTIONS}[name]
    if value not in allowed:
        raise DataError(f"{name}: got {value!r}; allowed: {', '.join(allowed)}")


def has_bf16(device) -> bool:
    """bf16 arithmetic in hardware: a GPU, or a CPU with one of BF16_FLAGS."""
    return torch.device(device).type == "cuda" or any(f in cpu_info()["cpu_flags"] for f in BF16_FLAGS)


def candidates(precision: str, attention: str, device) -> list[tuple[str, str]]:
    """(dtype, attention) pairs the setting leaves open on `device`, fp32 + SDPA first where open."""
    cuda = torch.device(device).type == "cuda"
    dtypes = [precision] if precision != "auto" else ["bf16"] if cuda else ["fp32", "bf16"] if has_bf16(device) \
        else ["fp32"]
    attns = [attention] if attention != "auto" else ["sdpa"] if cuda else ["sdpa", "eager"]
    return [(d, a) for d in dtypes for a in attns]


def legacy(device) -> Precision:
    """What kn ran before the choice existed (a checkpoint that records none): bf16 on a GPU, fp32
    on the CPU, SDPA attention."""
    dtype = "bf16" if torch.device(device).type == "cuda" else "fp32"
    return Precision(dtype, "sdpa", "recorded before kn chose precision: kn's rule then (bf16 on a GPU, fp32 on the CPU)")


def set_attention(model, attention: str) -> None:
    """Switch the model's attention kernel (a peft-wrapped model: its base model's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(attention)


def choose(model, batch: tuple, precision: str = "auto", attention: str = "auto", device="cpu",
           compile: str = "off", total_steps: int = 0) -> Precision:
    """The run's Precision for `model` on its first batch (ids [B, T], labels [B, T], mask or None),
    measured where more than one candidate is open (see the module docstring). `compile`: off | on |
    auto (a run of `total_steps` expected to last COMPILE_MIN_S eager: compiled timed against eager)."""
    cands = candidates(precision, attention, device)
    key = (*_where(model, batch, device), tuple(cands), precision, attention)
    if key not in _CHOSEN:
        if len(cands) == 1:
            why = "set" if (precision != "auto" and attention != "auto") else _unmeasured(precision, attention, device)
            _CHOSEN[key] = Precision(*cands[0], why)
        else:
            _CHOSEN[key] = _measured(model, batch, cands, device, precision)
    p = _CHOSEN[key]
    if compile == "auto" and (expected := _eager_s(model, batch, p, device) * total_steps) < COMPILE_MIN_S:
        p = replace(p, reason=f"{p.reason}; eager: a run of about {expected / 60:.1f} min is too short to compile "
                              f"(compiled from {COMPILE_MIN_S / 60:.0f} min)")
    elif compile != "off":
        ckey = (key, compile)
        if ckey not in _CHOSEN:
            _CHOSEN[ckey] = _compiled(model, batch, p, cands, compile, device)
        p = _CHOSEN[ckey]
    return _record(p)


def _record(p: Precision) -> Precision:
    record_precision(p.record())
    return p


def _unmeasured(precision: str, attention: str, device) -> str:
    if torch.device(device).type == "cuda":
        return "auto on a GPU: bf16 autocast and SDPA attention (fused kernels), not measured"
    flags = cpu_info()["cpu_flags"]
    return f"auto: this CPU has no bf16 instructions ({' '.join(BF16_FLAGS)} not in its flags {flags}): fp32" \
        if precision == "auto" else f"precision {precision} as set"


def _shape(model) -> tuple:
    c = model.config
    return (type(model).__name__, c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
            sum(p.numel() for p in model.parameters()))


def _measured(model, batch: tuple, cands: list, device, precision: str) -> Precision:
    """Time each candidate on a copy of `model`; the fastest wins (fp32 + SDPA unless another is MARGIN faster)."""
    med = _timed(model, batch, [(d, a, False) for d, a in cands], device)
    first = f"{cands[0][0]}+{cands[0][1]}"
    best = min(med, key=med.get)
    if med[best] * MARGIN > med[first]:
        best = first
    flags = [f for f in BF16_FLAGS if f in cpu_info()["cpu_flags"]]
    hardware = f"bf16 instructions: {', '.join(flags)}" if flags else "no bf16 instructions: fp32 only"
    why = (f"auto, measured ({ROUNDS} steps each on the run's first batch): {best} "
           f"{med[first] / med[best]:.2f}x {first}; " + (hardware if precision == "auto" else f"precision {precision} as set"))
    dtype, attn = best.split("+")
    return Precision(dtype, attn, why, med)


def _where(model, batch: tuple, device) -> tuple:
    """What a measurement depends on besides the candidates: model shape, batch shapes, device, threads."""
    return (_shape(model), tuple(tuple(t.shape) for t in batch if t is not None), str(device), torch.get_num_threads())


def _eager_s(model, batch: tuple, p: Precision, device) -> float:
    """Seconds a step of `p` takes eager: measured by _measured, else timed now (once per shape)."""
    if p.name in p.seconds_per_step:
        return p.seconds_per_step[p.name]
    key = ("eager", p.name, *_where(model, batch, device))
    if key not in _CHOSEN:
        _CHOSEN[key] = _timed(model, batch, [(p.dtype, p.attention, False)], device)[p.name]
    return _CHOSEN[key]


def _compiled(model, batch: tuple, p: Precision, open_: list, compile: str, device) -> Precision:
    """The fastest of the (dtype, attention) pairs `open_` compiled, or `p`'s own compiled where it is
    within MARGIN of that (and, with compile "auto", itself MARGIN faster than `p` eager); with compile
    "auto" only if the fastest is MARGIN faster than `p`'s eager step, and only if compiling works (an
    error is recorded, the run stays eager)."""
    cands = [(p.dtype, p.attention, True)] + [(d, a, True) for d, a in open_ if (d, a) != (p.dtype, p.attention)]
    cands += [(p.dtype, p.attention, False)] if compile == "auto" else []
    if len(cands) == 1:
        return replace(p, compiled=True, reason=p.reason + "; compiled as set")
    try:
        med = _timed(model, batch, cands, device, ROUND_S)
    except Exception as e:          # torch.compile's errors have no common class; "on" lets them through
        if compile == "on":
            raise
        return replace(p, reason=f"{p.reason}; eager: compiling failed ({type(e).__name__}: {str(e)[:200]})")
    own, auto = f"{p.name}+compiled", compile == "auto"
    base = p.name if auto else own
    fastest = min((k for k in med if k.endswith("+compiled")), key=med.get)
    if auto and med[fastest] * MARGIN > med[p.name]:
        why = f"{p.reason}; compiled at best {fastest} {med[p.name] / med[fastest]:.2f}x {p.name}: eager kept"
        return replace(p, reason=why, seconds_per_step=p.seconds_per_step | med)
    best = own if med[own] <= med[fastest] * MARGIN and (not auto or med[own] * MARGIN <= med[p.name]) else fastest
    why = f"{p.reason}; compiled ({compile}): {best} {med[base] / med[best]:.2f}x {base}"
    return Precision(*best.split("+")[:2], why, p.seconds_per_step | med, compiled=True)


def _timed(model, batch: tuple, cands: list, device, fill: float = 0.0) -> dict:
    """name -> median seconds per step of each (dtype, attention, compiled) candidate, run on a copy of
    `model` in interleaved rounds of about `fill` seconds (one step at least; torch's RNG left as it was)."""
    with torch.random.fork_rng(devices=[]):
        steps = {c: _step_on_copy(model, batch, *c, device) for c in cands}
        first = {}
        for c, step in steps.items():
            step()                                                  # warm-up: allocations, kernel choice, compiling
            if fill:
                t0 = time.perf_counter()
                step()
                first[c] = time.perf_counter() - t0
        n = max(1, math.ceil(fill / max(min(first.values()), 1e-6))) if fill else 1
        times = {c: [] for c in cands}
        for _ in range(ROUNDS):
            for c, step in steps.items():
                t0 = time.perf_counter()
                for _ in range(n):
                    step()
                times[c].append((time.perf_counter() - t0) / n)
    return {Precision(*c[:2], "", compiled=c[2]).name: round(statistics.median(t), 6) for c, t in times.items()}


RECOMPILE_LIMIT = 256  # graphs kept per compiled function: up to four per model shape and batch a process
                       # trains (the candidates fp32/bf16 x sdpa/eager), however many models share them


def compiled_model(model):
    """torch.compile of `model` for one shape (dynamic=False: a run's kernels do not depend on what the
    process compiled before) in the default mode (kernels chosen by rule, not by timing: runs repeat);
    past RECOMPILE_LIMIT shapes in one process it raises rather than fall back to eager unrecorded."""
    for limit in ("recompile_limit", "accumulated_recompile_limit"):
        setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), RECOMPILE_LIMIT))
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    return torch.compile(model, dynamic=False)


def _step_on_copy(model, batch: tuple, dtype: str, attention: str, compiled: bool, device):
    """A closure running one optimizer step (forward, backward, clip, AdamW) of a copy of `model`."""
    twin = copy.deepcopy(model)
    set_attention(twin, attention)
    twin.train()
    forward = compiled_model(twin) if compiled else twin
    opt = torch.optim.AdamW([p for p in twin.parameters() if p.requires_grad], lr=1e-4, fused=compiled or None)
    x, y, mask = batch
    how = Precision(dtype, attention, "")

    def step():
        with how.autocast(device):
            loss = forward(input_ids=x, attention_mask=mask, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        else:
            loss.item()
    return step
