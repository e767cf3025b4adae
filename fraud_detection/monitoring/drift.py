"""Drift statistics: binned distributions and the population stability index (PSI).

Pure functions, no I/O. A reference distribution is stored as interior bin edges (quantiles of
the training values) and the share of reference rows in each bin, so the model carries a few
hundred numbers rather than its training rows.

Why PSI rather than a two-sample test (Kolmogorov-Smirnov, chi-squared): on the tens of thousands
of rows of a week, a test's p-value flags shifts far too small to matter, so its alarm rate
grows with traffic. PSI is an effect size: it does not grow with the number of rows, it is
computed from the stored bins alone, and it has conventional readings (< 0.1 stable, 0.1-0.25
moderate, > 0.25 a real shift).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 10
# A bin empty on one side would make PSI infinite; shares are floored at this before the log.
SHARE_FLOOR = 1e-4
# A value this close to an edge (relative) counts as on it. Many values sit exactly on an edge
# (an amount ratio of 1: the card's only transaction of the window), and the two ways of
# computing features put them a few last bits apart: the batch path takes differences of
# cumulative sums (up to 4e-10 relative off here), the service sums the window (exactly 1).
# Without the tolerance, 99 of 1,944 rows of two days changed bins between the service's log
# and the batch file, and the PSI of CUSTOMER_ID_AMOUNT_RATIO_1DAY_WINDOW of a day read 0.067
# from one and 0.008 from the other (tests/monitoring/test_monitor_service_log.py); with it,
# none.
EDGE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class BinnedDistribution:
    """Interior bin edges and the share of rows per bin (``len(edges) + 1`` shares).

    A value ``v`` falls in bin ``i`` when exactly ``i`` edges are ``<= v`` (to
    ``EDGE_TOLERANCE``): an integer-valued
    feature keeps each of its values in one bin, and a constant feature has one bin.
    """

    edges: tuple[float, ...]
    shares: tuple[float, ...]

    def to_dict(self) -> dict[str, list[float]]:
        return {"edges": list(self.edges), "shares": list(self.shares)}

    @classmethod
    def from_counts(cls, edges: Sequence[float], counts: Sequence[int]) -> BinnedDistribution:
        """The distribution of rows counted per bin of ``edges`` (``len(edges) + 1`` counts):
        how an engine that counts rather than holds the values builds it."""
        counts = np.asarray(counts, dtype=np.int64)
        if counts.size != len(edges) + 1:
            raise ValueError(f"{len(edges)} edges make {len(edges) + 1} bins, not {counts.size}")
        if counts.sum() == 0:
            raise ValueError("no values to bin")
        shares = counts / counts.sum()
        return cls(tuple(float(edge) for edge in edges), tuple(float(share) for share in shares))

    @classmethod
    def from_dict(cls, values: dict[str, Sequence[float]]) -> BinnedDistribution:
        return cls(tuple(map(float, values["edges"])), tuple(map(float, values["shares"])))


def quantile_edges(values: np.ndarray, n_bins: int = DEFAULT_BINS) -> tuple[float, ...]:
    """Distinct interior quantile edges that cut ``values`` into at most ``n_bins`` bins.

    Repeated quantiles (a feature with few distinct values, or a constant one) collapse into
    one edge, so such a feature gets fewer bins, never empty ones by construction.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return ()
    # Observed values as edges (no interpolation): an integer feature is cut between integers.
    quantiles = np.quantile(values, quantile_levels(n_bins), method="inverted_cdf")
    return distinct_edges(quantiles, float(values.min()))


def quantile_levels(n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """The levels of the interior quantiles that cut values into ``n_bins`` equal bins."""
    return np.linspace(0, 1, n_bins + 1)[1:-1]


def distinct_edges(quantiles: Sequence[float], minimum: float) -> tuple[float, ...]:
    """The interior edges that ``quantiles`` of values whose least finite value is ``minimum``
    make: repeated quantiles collapse into one edge, in increasing order."""
    edges = np.unique(np.asarray(quantiles, dtype=np.float64))
    # An edge at the minimum would leave its lower bin empty: nothing is below the minimum.
    return tuple(float(edge) for edge in edges if edge > minimum)


def bin_shares(values: np.ndarray, edges: Sequence[float]) -> tuple[float, ...]:
    """The share of ``values`` in each bin that ``edges`` define (``len(edges) + 1`` bins); a
    value within ``EDGE_TOLERANCE`` (relative) of an edge counts as on it (the upper bin)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values to bin")
    finite = np.isfinite(values)  # -inf + tolerance * inf would be NaN, the top bin
    nudged = np.where(finite, values + EDGE_TOLERANCE * np.abs(np.where(finite, values, 0)), values)
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), nudged, side="right")
    counts = np.bincount(bins, minlength=len(edges) + 1)
    return tuple(float(share) for share in counts / values.size)


def binned(values: np.ndarray, n_bins: int = DEFAULT_BINS) -> BinnedDistribution:
    """The reference distribution of ``values``: quantile edges and the shares they make."""
    edges = quantile_edges(values, n_bins)
    return BinnedDistribution(edges, bin_shares(values, edges))


def population_stability_index(
    expected: Sequence[float], actual: Sequence[float], floor: float = SHARE_FLOOR
) -> float:
    """PSI = sum over bins of (actual - expected) * ln(actual / expected), shares floored.

    0 for identical distributions; symmetric in its two arguments.
    """
    expected_shares = np.maximum(np.asarray(expected, dtype=np.float64), floor)
    actual_shares = np.maximum(np.asarray(actual, dtype=np.float64), floor)
    if expected_shares.shape != actual_shares.shape:
        raise ValueError(f"{expected_shares.size} expected shares but {actual_shares.size} actual")
    ratio = np.log(actual_shares / expected_shares)
    return float(np.sum((actual_shares - expected_shares) * ratio))


def psi_against(reference: BinnedDistribution, values: np.ndarray) -> float:
    """PSI of ``values`` binned on the reference's edges, against the reference's shares."""
    return population_stability_index(reference.shares, bin_shares(values, reference.edges))
