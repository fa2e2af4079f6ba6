"""Acquisition and forgetting measured on a trajectory (book/papers.md, Chang et al.): pure functions
of l at the measured steps (kn.trajectories). l(t) is measured before the update of step t, so l(t_i)
is "just before" the injection at t_i.

  t_LAM = argmax_t l(t) over (t_i, t_i + lam_window]     (local acquisition maximum, paper 50 steps)
  E     = l(t_LAM) - l(t_i)                                (effectivity; for controls at the same t_i)
  R(t)  = (l(t_LAM + t) - l(t_pre)) / (l(t_LAM) - l(t_pre)), t_pre = the first injection step of
          the scenario (theta before any injection), t_LAM that of the last injection; l is the mean
          over paragraphs ("minus_control": the injected mean minus the controls' mean, step by step)
Forgetting laws, least squares on R(t) after the last injection (`fit_forgetting`):
  log     R = a - b log t        Chang et al.'s "power law"; t* = exp(a / b) is their learnability
                                 threshold (a fact not seen again within ~t* steps is forgotten)
  linear  R = a - b t
  exp     R = c + a exp(-t / tau)
  AIC = n log(RSS / n) + 2 (k + 1) (Gaussian residuals, k parameters plus their variance); `best` has the
  lowest, delta_aic is its lead over the next; `power_law` only when log is best by >= AIC_MARGIN and
  decays (b > 0): a log law that fits a rising R is no forgetting.
Entry points: `local_max`, `effectivity`, `retainability`, `fit_log`, `fit_linear`, `fit_exp`, `aic`,
`fit_forgetting`, `predict`; `LAWS`, `AIC_MARGIN`, `MIN_POINTS`, `MAX_LOG_T`.
"""
from __future__ import annotations

import numpy as np

from kn.errors import DataError

MAX_LOG_T = float(np.log(1e9))   # a fitted t* beyond 1e9 steps is reported as None (no forgetting)
LAWS = ("log", "linear", "exp")
AIC_MARGIN = 2.0                 # "power law" needs the log law's AIC lower than the others' by this
MIN_POINTS = 5                   # points of R the three fits need (exp has 3 parameters)


# ----------------------------------------------------------------------------- metrics


def _rows(steps: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Row of each step in t (DataError if one was not measured)."""
    rows = np.searchsorted(steps, t)
    if np.any(rows >= len(steps)) or np.any(steps[np.minimum(rows, len(steps) - 1)] != t):
        raise DataError(f"steps: l was not measured at step(s) {np.setdiff1d(t, steps)[:5].tolist()}")
    return rows


def local_max(steps: np.ndarray, l: np.ndarray, t_inj: int, window: int) -> np.ndarray:
    """t_LAM per probe: the step of the largest l in (t_inj, t_inj + window]; l is [S] or [S, P]."""
    idx = np.nonzero((steps > t_inj) & (steps <= t_inj + window))[0]
    if not len(idx):
        raise DataError(f"lam_window: no measurement in ({t_inj}, {t_inj + window}]")
    return steps[idx[np.argmax(l[idx], axis=0)]]


def _take(l: np.ndarray, rows) -> np.ndarray:
    """l[rows[p], p] for every probe p (l [S, P]) or l[rows] (l [S])."""
    return l[rows] if l.ndim == 1 else l[rows, np.arange(l.shape[1])]


def effectivity(steps: np.ndarray, l: np.ndarray, t_inj: int, window: int) -> np.ndarray:
    """E = l(t_LAM) - l(t_inj) per probe (book/papers.md, Chang et al.); l(t_inj) is before the update."""
    t_lam = local_max(steps, l, t_inj, window)
    return _take(l, _rows(steps, t_lam)) - l[_rows(steps, np.array([t_inj]))[0]]


def retainability(steps: np.ndarray, l: np.ndarray, t_lam, t_pre: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(t [H], R [H, P]) for t = 1..horizon (book/papers.md, Chang et al.); NaN where l(t_LAM + t) was not
    measured or the acquisition l(t_LAM) - l(t_pre) is not positive."""
    l2 = l[:, None] if l.ndim == 1 else l
    t_lam = np.broadcast_to(np.asarray(t_lam), (l2.shape[1],))
    pre = l2[_rows(steps, np.array([t_pre]))[0]]
    gain = _take(l2, _rows(steps, t_lam)) - pre                                          # [P]
    t = np.arange(1, horizon + 1)
    want = t_lam[None, :] + t[:, None]                                                   # [H, P]
    rows = np.minimum(np.searchsorted(steps, want), len(steps) - 1)
    ok = (steps[rows] == want) & (gain > 0)[None, :]
    R = np.where(ok, (l2[rows, np.arange(l2.shape[1])] - pre) / np.where(gain > 0, gain, 1.0), np.nan)
    keep = ok.any(axis=1)
    return t[keep], (R[keep] if l.ndim > 1 else R[keep, 0])


# ----------------------------------------------------------------------------- forgetting laws


def _lstsq(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares y ~ X @ coef: (coef, residual sum of squares)."""
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    return coef, float(np.sum((y - X @ coef) ** 2))


def aic(rss: float, n: int, k: int) -> float:
    """AIC of a least-squares fit with k parameters and Gaussian residuals (their variance counts too)."""
    return float(n * np.log(max(rss, 1e-12 * n) / n) + 2 * (k + 1))


def fit_log(t, R) -> dict:
    """R = a - b log t; t* = exp(a / b) (None when R does not decay, or t* > e^MAX_LOG_T steps)."""
    t, R = np.asarray(t, float), np.asarray(R, float)
    (a, slope), rss = _lstsq(np.column_stack([np.ones_like(t), np.log(t)]), R)
    b = -slope
    t_star = float(np.exp(a / b)) if b > 0 and a / b < MAX_LOG_T else None
    return {"a": float(a), "b": float(b), "x_intercept": t_star, "rss": rss, "aic": aic(rss, len(t), 2)}


def fit_linear(t, R) -> dict:
    """R = a - b t."""
    t, R = np.asarray(t, float), np.asarray(R, float)
    (a, slope), rss = _lstsq(np.column_stack([np.ones_like(t), t]), R)
    return {"a": float(a), "b": float(-slope), "rss": rss, "aic": aic(rss, len(t), 2)}


def fit_exp(t, R) -> dict:
    """R = c + a exp(-t / tau): c and a by least squares at each tau; tau on a log grid from 0.1 x the
    first t to 100 x the last (there the law is a line), then refined between the grid's neighbours."""
    from scipy.optimize import minimize_scalar
    t, R = np.asarray(t, float), np.asarray(R, float)

    def fit(log_tau):
        return _lstsq(np.column_stack([np.ones_like(t), np.exp(-t / np.exp(log_tau))]), R)

    grid = np.log(np.geomspace(0.1 * t.min(), 100 * t.max(), 60))
    k = int(np.argmin([fit(g)[1] for g in grid]))
    best = minimize_scalar(lambda g: fit(g)[1], bounds=(grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]),
                           method="bounded").x
    log_tau = best if fit(best)[1] <= fit(grid[k])[1] else grid[k]
    (c, a), rss = fit(log_tau)
    return {"c": float(c), "a": float(a), "tau": float(np.exp(log_tau)), "rss": rss, "aic": aic(rss, len(t), 3)}


FITS = {"log": fit_log, "linear": fit_linear, "exp": fit_exp}


def predict(law: str, fit: dict, t) -> np.ndarray:
    """R(t) of a fitted law (a figure's line)."""
    t = np.asarray(t, float)
    if law == "log":
        return fit["a"] - fit["b"] * np.log(t)
    if law == "linear":
        return fit["a"] - fit["b"] * t
    if law == "exp":
        return fit["c"] + fit["a"] * np.exp(-t / fit["tau"])
    raise DataError(f"law: got {law!r}; allowed: {', '.join(LAWS)}")


def fit_forgetting(t, R) -> dict:
    """The three forgetting laws on the finite points of R(t): {"fits": law -> its fit with "aic",
    "best": the law of lowest AIC, "delta_aic": its lead over the next, "power_law": best is log by
    >= AIC_MARGIN and decays (b > 0), "n": points}. DataError with fewer than MIN_POINTS points."""
    t, R = np.asarray(t, float), np.asarray(R, float)
    ok = np.isfinite(R) & (t > 0)
    if ok.sum() < MIN_POINTS:
        raise DataError(f"R: {int(ok.sum())} finite points; the fits need at least {MIN_POINTS}")
    fits = {law: FITS[law](t[ok], R[ok]) for law in LAWS}
    order = sorted(LAWS, key=lambda law: fits[law]["aic"])
    delta = fits[order[1]]["aic"] - fits[order[0]]["aic"]
    power = order[0] == "log" and delta >= AIC_MARGIN and fits["log"]["b"] > 0
    return {"fits": fits, "best": order[0], "delta_aic": float(delta), "power_law": bool(power), "n": int(ok.sum())}
