"""What Spark's quantile sketch promises, for tests comparing its bin edges with NumPy's."""

from __future__ import annotations

import math

import numpy as np

from fraud_detection.monitoring.drift import quantile_levels


def within_rank_error(edge: float, ordered: np.ndarray, rank_error: float) -> bool:
    """``percentile_approx`` promises, for a level q over n values, a value x of the column with
    floor((q - e) n) <= rank(x) <= ceil((q + e) n), e = ``rank_error`` (1 / accuracy; a value
    repeated holds every rank of its run): does ``edge`` keep it for one of the levels the
    pandas engine cuts at? ``ordered``: the column's finite values, sorted."""
    n = ordered.size
    first_rank = int(np.searchsorted(ordered, edge, side="left")) + 1
    last_rank = int(np.searchsorted(ordered, edge, side="right"))
    return any(
        max(first_rank, math.floor((level - rank_error) * n))
        <= min(last_rank, math.ceil((level + rank_error) * n))
        for level in quantile_levels()
    )
