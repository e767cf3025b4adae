"""The reference profile a model carries: what its inputs and scores looked like at training.

Built by the train step (``build_profile``) and saved as a JSON artifact inside the logged
model (``contract.REFERENCE_PROFILE_ARTIFACT``), so it travels with every registered version
and is found from ``models:/<name>@<alias>``. The monitor compares windows of scored
transactions with it (``monitoring.drift``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fraud_detection.monitoring.drift import DEFAULT_BINS, BinnedDistribution, binned

PROFILE_VERSION = 1


@dataclass(frozen=True)
class ReferenceProfile:
    """Per-feature distributions on the training window; score distribution and alert rate on
    the validation window (scored by the candidate whose scores tuned the threshold)."""

    features: Mapping[str, BinnedDistribution]
    score: BinnedDistribution
    alert_rate: float
    threshold: float
    training_rows: int
    validation_rows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "features": {name: value.to_dict() for name, value in self.features.items()},
            "score": self.score.to_dict(),
            "alert_rate": self.alert_rate,
            "threshold": self.threshold,
            "training_rows": self.training_rows,
            "validation_rows": self.validation_rows,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ReferenceProfile:
        return cls(
            features={
                name: BinnedDistribution.from_dict(value)
                for name, value in values["features"].items()
            },
            score=BinnedDistribution.from_dict(values["score"]),
            alert_rate=float(values["alert_rate"]),
            threshold=float(values["threshold"]),
            training_rows=int(values["training_rows"]),
            validation_rows=int(values["validation_rows"]),
        )


def build_profile(
    training: pd.DataFrame,
    features: Sequence[str],
    validation_scores: np.ndarray,
    threshold: float,
    n_bins: int = DEFAULT_BINS,
) -> ReferenceProfile:
    """The profile of a model trained on ``training`` whose validation scores are given."""
    scores = np.asarray(validation_scores, dtype=np.float64)
    return ReferenceProfile(
        features={name: binned(training[name].to_numpy(np.float64), n_bins) for name in features},
        score=binned(scores, n_bins),
        alert_rate=float(np.mean(scores >= threshold)),
        threshold=float(threshold),
        training_rows=len(training),
        validation_rows=int(scores.size),
    )
