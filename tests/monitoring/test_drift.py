"""PSI and binned distributions on distributions whose answer is known."""

import numpy as np
import pytest

from fraud_detection.monitoring.drift import (
    BinnedDistribution,
    bin_shares,
    binned,
    population_stability_index,
    psi_against,
    quantile_edges,
)


def test_quantile_bins_hold_a_tenth_each():
    values = np.arange(1_000, dtype=float)
    reference = binned(values, 10)
    assert len(reference.edges) == 9
    assert reference.shares == pytest.approx([0.1] * 10, abs=0.002)


def test_constant_feature_has_one_bin_and_integer_values_stay_whole():
    assert quantile_edges(np.full(50, 3.0)) == ()
    assert binned(np.full(50, 3.0)).shares == (1.0,)
    counts = np.array([0] * 65 + [1] * 20 + [2] * 15, dtype=float)
    reference = binned(counts, 10)
    assert reference.edges == (1.0, 2.0)
    assert reference.shares == pytest.approx([0.65, 0.2, 0.15])


def test_psi_known_value():
    # (0.4 - 0.5) ln(0.4/0.5) + (0.6 - 0.5) ln(0.6/0.5)
    expected = -0.1 * np.log(0.8) + 0.1 * np.log(1.2)
    assert population_stability_index([0.5, 0.5], [0.4, 0.6]) == pytest.approx(expected)
    assert population_stability_index([0.5, 0.5], [0.5, 0.5]) == 0.0


def test_empty_bin_is_floored_not_infinite():
    value = population_stability_index([0.5, 0.5], [1.0, 0.0])
    assert np.isfinite(value) and value > 1


def test_same_distribution_is_stable_and_a_shift_is_not():
    generator = np.random.default_rng(0)
    reference = binned(generator.normal(size=20_000))
    assert psi_against(reference, generator.normal(size=5_000)) < 0.02
    assert psi_against(reference, generator.normal(loc=1.0, size=5_000)) > 0.25


def test_amounts_tripled_cross_the_default_threshold():
    generator = np.random.default_rng(1)
    amounts = generator.gamma(2.0, 30.0, size=20_000)
    reference = binned(amounts)
    assert psi_against(reference, generator.gamma(2.0, 30.0, size=5_000)) < 0.05
    assert psi_against(reference, 3 * generator.gamma(2.0, 30.0, size=5_000)) > 0.25


def test_round_trip_and_bad_input():
    reference = binned(np.arange(100.0))
    assert BinnedDistribution.from_dict(reference.to_dict()) == reference
    with pytest.raises(ValueError, match="no values"):
        bin_shares(np.array([]), reference.edges)
    with pytest.raises(ValueError, match="expected shares"):
        population_stability_index([0.5, 0.5], [1.0])
