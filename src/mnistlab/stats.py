"""Numbers over seeds: mean and sample standard deviation, and whether a difference exceeds the spread.

A difference counts as larger than the seed-to-seed spread when it exceeds the sum of the two
standard deviations. The report's comparisons (report.py) and the claims' tests (claims.py) use these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def mean_std(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "n": len(a)}


@dataclass(frozen=True)
class Comparison:
    """Mean a minus mean b in points, against the seed-to-seed spread (the sum of the two standard deviations)."""

    difference: float
    spread: float | None  # None when either side has one seed only: the spread is unknown
    exceeds: bool  # the difference is larger than the spread (False when the spread is unknown)

    def phrase(self) -> str:
        """Whether the difference exceeds the spread, as the report words it."""
        if self.spread is None:
            return "one seed only, so the spread between seeds is unknown"
        side = "larger than" if self.exceeds else "within"
        return f"{side} the seed-to-seed spread of {self.spread:.2f} points"


def compare_means(a: dict, b: dict, scale: float = 100.0) -> Comparison:
    """Compare two `mean_std` results: a - b times `scale` (100: fractions, such as accuracies, in
    percentage points), against the sum of the two standard deviations."""
    difference = scale * (a["mean"] - b["mean"])
    if a["n"] < 2 or b["n"] < 2:
        return Comparison(difference, None, False)
    spread = scale * (a["std"] + b["std"])
    return Comparison(difference, spread, abs(difference) > spread)
