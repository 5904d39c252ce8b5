"""Numbers over seeds: mean and standard deviation, and differences with a 95% confidence interval and a p-value.

Two configurations trained with the same seeds share, seed by seed, the validation split, the
initialization and the order of the data, so their difference is taken seed by seed: a paired
t-test (scipy.stats.ttest_rel). Two groups without shared seeds are compared with Welch's t-test
(scipy.stats.ttest_ind with equal_var=False). Several tests that decide together are corrected
with Holm's method (`holm`).

Two single models measured on the same test images are compared image by image (`mcnemar`):
each image is a pair of outcomes, and only the images where the models disagree carry evidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def mean_std(values: list[float]) -> dict:
    """{"mean", "std", "n"}; of no values, {"mean": None, "std": None, "n": 0}."""
    if not len(values):
        return {"mean": None, "std": None, "n": 0}
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


@dataclass(frozen=True)
class Difference:
    """Mean of a minus mean of b, with its 95% confidence interval and two-sided p-value.

    `paired`: taken seed by seed (n is the number of seeds both have); otherwise Welch's test over
    the two groups (n is the smaller group). With fewer than two values a side, nothing but the
    difference is known: low, high and p are None; with none, nothing is (difference None too).
    """

    difference: float | None
    low: float | None
    high: float | None
    p: float | None
    paired: bool
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired_difference(a: dict, b: dict, image_variance: float = 0.0) -> Difference:
    """a - b over the seeds both have, a and b being {seed: value}: a paired t-test.

    `image_variance` is the variance that the choice of test images adds to the mean difference,
    when every seed was measured on the same images (their sampling error, which the spread over
    seeds cannot show). It is added to the t-test's squared standard error, s^2 / n + image_variance,
    with the t-test's n - 1 degrees of freedom; 0 is the plain paired t-test.
    """
    seeds = sorted(set(a) & set(b))
    x, y = np.array([a[s] for s in seeds], dtype=float), np.array([b[s] for s in seeds], dtype=float)
    difference = float(np.mean(x - y)) if seeds else None
    if len(seeds) < 2:
        return Difference(difference, None, None, None, True, len(seeds))
    if image_variance > 0:
        n = len(seeds)
        se = float(np.sqrt(np.var(x - y, ddof=1) / n + image_variance))
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * se
        p = float(2 * stats.t.sf(abs(difference) / se, n - 1))
        return Difference(difference, difference - half, difference + half, p, True, n)
    if np.all(x - y == x[0] - y[0]):  # no variation between seeds: the t statistic is undefined
        return Difference(difference, difference, difference, 0.0 if difference else 1.0, True, len(seeds))
    result = stats.ttest_rel(x, y)
    interval = result.confidence_interval(CONFIDENCE)
    return Difference(difference, float(interval.low), float(interval.high), float(result.pvalue), True, len(seeds))


def welch_difference(a: list[float], b: list[float]) -> Difference:
    """mean(a) - mean(b) for two groups that share no seeds: Welch's t-test (unequal variances)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(x.mean() - y.mean()) if len(x) and len(y) else None
    n = min(len(x), len(y))
    if n < 2 or (x.std() == 0 and y.std() == 0):
        return Difference(difference, None, None, None, False, n)
    result = stats.ttest_ind(x, y, equal_var=False)
    interval = result.confidence_interval(CONFIDENCE)
    return Difference(difference, float(interval.low), float(interval.high), float(result.pvalue), False, n)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down correction: the smallest p is multiplied by m, the next by m - 1, and so on,
    each kept at least as large as the one before and at most 1. A None (no test) stays None and
    does not count in m."""
    known = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    corrected: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        corrected[i] = running
    return corrected


@dataclass(frozen=True)
class McNemar:
    """Two models on the same images: accuracy of a minus that of b, its 95% interval, McNemar's exact p.

    `a_only`: images a gets right and b wrong; `b_only`: the other way; `n`: the images.
    """

    difference: float
    low: float
    high: float
    p: float
    a_only: int
    b_only: int
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar(a_correct, b_correct) -> McNemar:
    """Image by image, two models' outcomes on the same images (booleans: right or wrong), as fractions.

    The p-value is McNemar's exact test: under "the models are equally accurate", each image on
    which they disagree is a's with probability 1/2, so a_only is binomial(a_only + b_only, 1/2)
    (scipy.stats.binomtest, two-sided); no disagreement at all gives p = 1. The interval of the
    difference (a_only - b_only) / n is the normal one for paired proportions (Wald): the difference
    ± z(0.975) sqrt(((a_only + b_only) / n - difference^2) / n).
    """
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"mcnemar takes two outcomes per image, as many for a as for b; got {a.shape} and {b.shape}")
    n, a_only, b_only = len(a), int(np.sum(a & ~b)), int(np.sum(b & ~a))
    difference = (a_only - b_only) / n
    half = float(stats.norm.ppf(0.5 + CONFIDENCE / 2)) * np.sqrt(max(0.0, (a_only + b_only) / n - difference**2) / n)
    p = float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue) if a_only + b_only else 1.0
    return McNemar(difference, float(difference - half), float(difference + half), p, a_only, b_only, n)
