"""XGBoost's trees walked with NumPy, for requests of a few rows: same probabilities, 4x sooner.

Every call to XGBoost's ``inplace_predict`` costs about 0.3 ms here before the first tree is
looked at (argument checks, array-interface JSON, thread set-up), which is most of the time of a
single-transaction request. For a handful of rows, walking the trees as NumPy arrays takes about
0.06 ms. The walk copies XGBoost's arithmetic exactly: splits compare float32 values (``x <
threshold`` goes left, a missing value follows the default branch), leaf values are added in
float32 one tree after the other starting from the base margin, and the logistic function uses
the C library's ``expf`` as XGBoost does. ``verified_walk`` builds it only for plain binary
logistic boosters and only keeps it if it gives bit-for-bit XGBoost's own probabilities on probe
rows built from every split threshold; otherwise the caller keeps using XGBoost.

Reason codes for the same few rows come from its sibling ``fast_contributions`` (exact TreeSHAP
in NumPy on the same flattened forest, verified against XGBoost's ``pred_contribs`` at load).

A fork may delete this module, and ``fast_contributions`` with it (``follower._fast_paths`` then
calls XGBoost for every request): single-row requests lose about 0.25 ms each, and about 0.3 ms
more when they ask for reason codes (``bench/serving.py``, ``docs/performance.md``,
``docs/serving.md``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Above this many rows XGBoost's own predictor is faster (measured: equal at about 12 rows).
SMALL_BATCH_ROWS = 8
_PROBE_ROWS = 512


@dataclass(frozen=True)
class TreeWalk:
    """A binary:logistic gradient-boosted forest as flat arrays, one slot per node."""

    feature: np.ndarray  # (trees * width,) split feature; leaves keep any value
    threshold: np.ndarray  # float32 split threshold, or the leaf value at a leaf
    left: np.ndarray  # global index of the left child (a leaf points to itself)
    right: np.ndarray
    default_left: np.ndarray  # where a missing value goes
    roots: np.ndarray  # global index of each tree's root
    depth: int
    base_margin: np.float32
    expf: Any  # the C library's expf

    def probabilities(self, values: np.ndarray) -> np.ndarray:
        """Fraud probabilities (float64, as ``Scorer.predict_proba_values``) for a few rows."""
        rows = np.asarray(values, dtype=np.float32)
        node = np.broadcast_to(self.roots, (rows.shape[0], self.roots.size))
        row_index = np.arange(rows.shape[0])[:, None]
        for _ in range(self.depth):
            value = rows[row_index, self.feature[node]]
            go_left = np.where(
                np.isnan(value), self.default_left[node], value < self.threshold[node]
            )
            node = np.where(go_left, self.left[node], self.right[node])
        leaves = self.threshold[node]
        start = np.full((rows.shape[0], 1), self.base_margin, dtype=np.float32)
        # cumsum adds left to right in float32: the order and rounding of XGBoost's own sum.
        margin = np.cumsum(np.hstack([start, leaves]), axis=1, dtype=np.float32)[:, -1]
        exp = np.array([self.expf(-float(m)) for m in margin], dtype=np.float32)
        return (np.float32(1.0) / (exp + np.float32(1.0))).astype(np.float64)


def walk_from_booster(booster: Any) -> TreeWalk | None:
    """Flatten ``booster`` (an ``xgboost.Booster``); None if it is not a plain binary forest."""
    libm = ctypes.util.find_library("m")
    if libm is None:
        return None
    expf = ctypes.CDLL(libm).expf
    expf.restype, expf.argtypes = ctypes.c_float, [ctypes.c_float]
    learner = json.loads(booster.save_raw("json"))["learner"]
    booster_model = learner["gradient_booster"]
    if (
        learner["objective"]["name"] != "binary:logistic"
        or booster_model.get("name") != "gbtree"
        or int(learner["learner_model_param"].get("num_target", "1")) != 1
    ):
        return None
    trees = booster_model["model"]["trees"]
    if not trees or any(any(kind != 0 for kind in tree["split_type"]) for tree in trees):
        return None  # categorical splits: not handled here
    width = max(len(tree["left_children"]) for tree in trees)
    size = width * len(trees)
    feature = np.zeros(size, dtype=np.int64)
    threshold = np.zeros(size, dtype=np.float32)
    left = np.arange(size, dtype=np.int64)
    right = np.arange(size, dtype=np.int64)
    default_left = np.zeros(size, dtype=bool)
    depth = 0
    for number, tree in enumerate(trees):
        offset = number * width
        children = np.array(tree["left_children"]), np.array(tree["right_children"])
        count = children[0].size
        inner = children[0] != -1
        nodes = slice(offset, offset + count)
        feature[nodes] = tree["split_indices"]
        threshold[nodes] = np.asarray(tree["split_conditions"], dtype=np.float32)
        left[nodes] = np.where(inner, children[0] + offset, np.arange(count) + offset)
        right[nodes] = np.where(inner, children[1] + offset, np.arange(count) + offset)
        default_left[nodes] = np.asarray(tree["default_left"], dtype=bool)
        depth = max(depth, _depth(children))
    base_score = float(str(learner["learner_model_param"]["base_score"]).strip("[]"))
    return TreeWalk(
        feature=feature,
        threshold=threshold,
        left=left,
        right=right,
        default_left=default_left,
        roots=np.arange(len(trees), dtype=np.int64) * width,
        depth=depth,
        base_margin=np.float32(np.log(base_score / (1.0 - base_score))),
        expf=expf,
    )


def _depth(children: tuple[np.ndarray, np.ndarray]) -> int:
    depth = np.zeros(children[0].size, dtype=np.int64)
    for node in range(children[0].size):  # children always come after their parent
        for child in (children[0][node], children[1][node]):
            if child != -1:
                depth[child] = depth[node] + 1
    return int(depth.max())


def probe_rows(walk: TreeWalk, n_features: int, seed: int = 0) -> np.ndarray:
    """Rows whose values sit on, just below and just above the split thresholds, and between."""
    rng = np.random.default_rng(seed)
    inner = walk.left != np.arange(walk.left.size)
    rows = np.zeros((_PROBE_ROWS, n_features), dtype=np.float32)
    for column in range(n_features):
        cuts = np.unique(walk.threshold[inner & (walk.feature == column)])
        if cuts.size == 0:
            rows[:, column] = rng.normal(size=_PROBE_ROWS).astype(np.float32)
            continue
        near = np.concatenate(
            [cuts, np.nextafter(cuts, np.float32(-np.inf)), np.nextafter(cuts, np.float32(np.inf))]
        )
        spread = rng.uniform(cuts.min() - 1, cuts.max() + 1, size=near.size).astype(np.float32)
        rows[:, column] = rng.choice(np.concatenate([near, spread]), size=_PROBE_ROWS)
    return rows


def verified_walk(booster: Any, n_features: int) -> TreeWalk | None:
    """A ``TreeWalk`` of ``booster`` if it reproduces XGBoost bit for bit on probe rows."""
    walk = walk_from_booster(booster)
    if walk is None:
        return None
    rows = probe_rows(walk, n_features)
    expected = np.asarray(booster.inplace_predict(rows), dtype=np.float64)
    if not np.array_equal(walk.probabilities(rows), expected):
        logger.info("NumPy tree walk differs from XGBoost on this platform: not used")
        return None
    return walk
