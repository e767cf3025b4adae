"""The out-of-sample score reference: the same bins as the profile's, however they are counted."""

import numpy as np
import pytest

from fraud_detection.monitoring.drift import binned
from fraud_detection.monitoring.profile import ReferenceProfile
from fraud_detection.monitoring.reference import (
    ScoreReference,
    out_of_sample,
    score_reference,
)

RANDOM = np.random.default_rng(7)
SAMPLES = {
    "scores": RANDOM.beta(0.3, 8.0, 5_000),
    "counts": RANDOM.poisson(1.2, 3_000).astype(float),
    "mostly zero": np.r_[np.zeros(960), RANDOM.random(40)],
    "constant": np.full(100, 0.25),
    "ten values": np.arange(10, dtype=float),
}


def test_score_reference_counts_alerts_at_the_threshold_inclusive():
    scores = np.array([0.0, 0.1, 0.2, 0.2, 0.5, 0.9, 0.01, 0.02, 0.03, 0.04])
    reference = score_reference(scores, threshold=0.2)
    assert reference.alert_rate == pytest.approx(0.4)  # 0.2, 0.2, 0.5, 0.9
    assert reference.rows == 10
    assert reference.score == binned(scores)
    assert ScoreReference.from_dict(reference.to_dict()) == reference


def test_out_of_sample_replaces_the_score_and_alert_rate_only():
    features = {"TX_AMOUNT": binned(SAMPLES["counts"])}
    profile = ReferenceProfile(features, binned(SAMPLES["scores"]), 0.01, 0.3, 3_000, 700)
    reference = score_reference(SAMPLES["scores"] * 1.5, threshold=0.3)
    combined = out_of_sample(profile, reference)
    assert combined.features == profile.features
    assert (combined.score, combined.alert_rate) == (reference.score, reference.alert_rate)
    assert (combined.threshold, combined.training_rows) == (0.3, 3_000)
    assert combined.alert_rate != profile.alert_rate
