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
computes the same bins with aggregates (``spark.profile.score_distribution``, which the Spark
profile's validation scores go through too).
"""

from __future__ import annotations

from collections.abc import Mapping
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


def out_of_sample(profile: ReferenceProfile, reference: ScoreReference) -> ReferenceProfile:
    """``profile`` with its score bins and alert rate taken from ``reference`` (its feature
    bins, from the training window, unchanged)."""
    return replace(profile, score=reference.score, alert_rate=reference.alert_rate)
