"""Statistics: confidence intervals of a cell's mean over seeds, the aggregates' stratified
bootstrap, Welch's two-sample test and the Holm correction of a family of tests.

rliable 1.2 draws its bootstrap resamples from NumPy's legacy global generator, so every
bootstrap here runs inside :func:`_seeded_global_rng` (seeded, then restored).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager

from torchrl_sym.report._deps import require

__all__ = [
    "DEFAULT_REPS",
    "DEFAULT_SEED",
    "T_INTERVAL_BELOW",
    "bootstrap_mean_ci",
    "holm",
    "interval_kind",
    "mean_ci",
    "t_mean_ci",
    "welch_ci",
    "welch_test",
]

DEFAULT_REPS = 2000
DEFAULT_SEED = 0
T_INTERVAL_BELOW = 5
"""A cell with fewer valid seeds than this gets a Student t interval of its mean, not rliable's
percentile bootstrap: a bootstrap over n values never leaves their range, and with 3 values its
95% interval is the range itself (3 values have 10 distinct resamples, the extreme ones each
drawn with probability 1/27 > 2.5%)."""


@contextmanager
def _seeded_global_rng(seed: int):
    """rliable 1.2's ``StratifiedBootstrap`` draws its resamples with ``np.random.choice`` (the
    global NumPy RNG) whatever ``random_state`` says, so a fixed bootstrap needs the global RNG
    seeded; it is restored afterwards so callers' streams are untouched."""
    import numpy as np

    state = np.random.get_state()  # noqa: NPY002 - rliable draws from the legacy global RNG
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def bootstrap_mean_ci(
    values: Sequence[float], *, reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED
) -> tuple[float, float]:
    """95% percentile-bootstrap CI of the mean of ``values`` (one per seed), from rliable:
    ``get_interval_estimates({k: values[:, None]}, aggregate_mean)`` with the global NumPy RNG
    seeded with ``seed``."""
    import numpy as np

    library, metrics = require("rliable.library"), require("rliable.metrics")

    scores = np.asarray(values, dtype=np.float64)[:, None]
    with _seeded_global_rng(seed):
        _, intervals = library.get_interval_estimates(
            {"cell": scores}, lambda x: np.array([metrics.aggregate_mean(x)]), reps=reps
        )
    low, high = intervals["cell"][:, 0]
    return float(low), float(high)


def t_mean_ci(values: Sequence[float], *, confidence: float = 0.95) -> tuple[float, float] | None:
    """Student t confidence interval of the mean of ``values`` (one per seed):
    ``mean ± t_{(1 + confidence) / 2, n - 1} · s / √n`` with ``s`` the sample standard deviation
    (ddof = 1); ``None`` with fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    stats = require("scipy.stats")
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def interval_kind(n: int) -> str:
    """The CI a cell of ``n`` valid seeds gets: ``"t"`` below :data:`T_INTERVAL_BELOW` seeds,
    else ``"bootstrap"`` (``"none"`` with fewer than 2)."""
    if n < 2:
        return "none"
    return "t" if n < T_INTERVAL_BELOW else "bootstrap"


def mean_ci(
    values: Sequence[float], *, reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED
) -> tuple[float, float] | None:
    """The 95% CI of the mean a cell shows (:func:`interval_kind`): :func:`t_mean_ci` with
    fewer than :data:`T_INTERVAL_BELOW` values, else :func:`bootstrap_mean_ci`; ``None`` with
    fewer than 2."""
    kind = interval_kind(len(values))
    if kind == "none":
        return None
    if kind == "t":
        return t_mean_ci(values)
    return bootstrap_mean_ci(values, reps=reps, seed=seed)


def _aggregate_estimates(matrix, *, reps: int, seed: int):
    """``(mean, iqm), ((mean_lo, mean_hi), (iqm_lo, iqm_hi))`` of a ``[runs, datasets]`` matrix
    (rliable ``aggregate_mean``/``aggregate_iqm``, stratified bootstrap over runs)."""
    import numpy as np

    library, metrics = require("rliable.library"), require("rliable.metrics")

    def both(x):
        return np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)])

    with _seeded_global_rng(seed):
        points, intervals = library.get_interval_estimates({"g": matrix}, both, reps=reps)
    point, ci = points["g"], intervals["g"]
    return (float(point[0]), float(point[1])), (
        (float(ci[0, 0]), float(ci[1, 0])),
        (float(ci[0, 1]), float(ci[1, 1])),
    )


def welch_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    """95% Welch t confidence interval of ``mean(a) - mean(b)`` (scipy
    ``ttest_ind(a, b, equal_var=False).confidence_interval()``); ``None`` when a side has fewer
    than 2 values or neither has any spread."""
    if len(a) < 2 or len(b) < 2:
        return None
    import numpy as np

    stats = require("scipy.stats")

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return None
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    low, high = float(ci.low), float(ci.high)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


def welch_test(a: Sequence[float], b: Sequence[float]) -> tuple[tuple[float, float], float] | None:
    """Welch's two-sample t test of ``mean(a) - mean(b)``: its 95% interval (as
    :func:`welch_ci`) and its two-sided p-value (scipy ``ttest_ind(a, b, equal_var=False)``);
    ``None`` when :func:`welch_ci` is. The interval excludes zero exactly when ``p < 0.05``."""
    ci = welch_ci(a, b)
    if ci is None:
        return None
    import numpy as np

    stats = require("scipy.stats")
    p = float(stats.ttest_ind(np.asarray(a, float), np.asarray(b, float), equal_var=False).pvalue)
    return (ci, p) if math.isfinite(p) else None


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (``None`` entries are not tests and
    stay ``None``). With the ``m`` p-values sorted, ``p_(1) <= ... <= p_(m)``, the adjusted
    ``p~_(i) = min(1, max_{j <= i} (m - j + 1) · p_(j))``; rejecting where ``p~ < α`` keeps the
    chance of any false rejection in the family at most ``α`` (Holm, 1979)."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(tested)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
