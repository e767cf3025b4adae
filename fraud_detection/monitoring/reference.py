"""The out-of-sample reference of a model's scores: what the monitor's score PSI and alert-rate
ratio compare a window with.

The profile inside the model (``monitoring.profile``) holds the scores of the validation window,
which with the default split is the window the final model was refitted on (in sample), without
the cards already known to be compromised (evaluate's metrics leave them out, as the book does).
The monitor watches every transaction of weeks the model never saw: against that reference,
quiet weeks of the default data read 1.31-1.50 times its alert rate, and in the drift drill
retrained champions kept alarming at about 2.2, so ``retrain=true`` retrained every week. The
evaluate step scores the whole test window (after the training window and the label delay,
known-compromised cards included) and saves its score bins and alert rate at the model's
threshold as a ``ScoreReference`` (``contract.write_score_reference``); the monitor compares the
windows of a registered version with it (quiet weeks: 0.94-1.08, bench/results/
monitor_quiet.json). Feature PSI stays against the training window's bins.

Pure functions, no I/O: the pandas engine bins the scores with ``drift.binned``; the Spark engine
computes the same quantiles and bin counts with aggregates and builds the reference with
``edges_from_quantiles`` and ``shares_from_tail_counts`` (``spark.evaluation``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fraud_detection.monitoring.drift import DEFAULT_BINS, BinnedDistribution, binned
from fraud_detection.monitoring.profile import ReferenceProfile

REFERENCE_VERSION = 1


@dataclass(frozen=True)
class ScoreReference:
    """A model's scores on its test window: their bins, and the share at or above ``threshold``."""

    score: BinnedDistribution
    alert_rate: float
    threshold: float
    rows: int
    window: str = ""  # the test window's first and last day, for people

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": REFERENCE_VERSION,
            "score": self.score.to_dict(),
            "alert_rate": self.alert_rate,
            "threshold": self.threshold,
            "rows": self.rows,
            "window": self.window,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ScoreReference:
        return cls(
            score=BinnedDistribution.from_dict(values["score"]),
            alert_rate=float(values["alert_rate"]),
            threshold=float(values["threshold"]),
            rows=int(values["rows"]),
            window=str(values.get("window", "")),
        )


def score_reference(
    scores: np.ndarray, threshold: float, n_bins: int = DEFAULT_BINS
) -> ScoreReference:
    """The reference of a model whose test-window scores are ``scores``."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    return ScoreReference(
        score=binned(values, n_bins),
        alert_rate=float(np.mean(values >= threshold)),
        threshold=float(threshold),
        rows=int(values.size),
    )


def quantile_levels(n_bins: int = DEFAULT_BINS) -> list[float]:
    """The interior quantile levels ``drift.quantile_edges`` cuts at (0.1, ..., 0.9 for 10)."""
    return [float(level) for level in np.linspace(0, 1, n_bins + 1)[1:-1]]


def edges_from_quantiles(quantiles: Sequence[float], minimum: float) -> tuple[float, ...]:
    """``drift.quantile_edges``'s rule applied to quantiles computed elsewhere (by Spark):
    distinct edges, none at or below the minimum (its lower bin would be empty)."""
    return tuple(float(edge) for edge in np.unique(np.asarray(quantiles, float)) if edge > minimum)


def shares_from_tail_counts(rows: int, at_or_above: Sequence[int]) -> tuple[float, ...]:
    """Bin shares from the number of rows at or above each edge (in edge order): bin ``i`` holds
    the values with exactly ``i`` edges at or below them, as ``drift.bin_shares`` counts."""
    if rows <= 0:
        raise ValueError("no values to bin")
    tails = [rows, *at_or_above, 0]
    return tuple((tails[i] - tails[i + 1]) / rows for i in range(len(tails) - 1))


def out_of_sample(profile: ReferenceProfile, reference: ScoreReference) -> ReferenceProfile:
    """``profile`` with its score bins and alert rate taken from ``reference`` (its feature
    bins, from the training window, unchanged)."""
    return replace(profile, score=reference.score, alert_rate=reference.alert_rate)
