"""Exact TreeSHAP in NumPy for requests of a few rows: XGBoost's reason codes without XGBoost.

Asking XGBoost for one row's contributions (``pred_contribs``) costs a DMatrix (about 0.1-0.2 ms)
plus the call (0.1-0.35 ms for 300 trees) on this machine, more than the whole request without
reasons, so ``reasons_p50_ratio`` (``bench/serving.py``: one row with 3 reasons over one row
without) missed its goal of 2 (2.2-5.2, median 3.0). This module computes the same numbers in
NumPy in about 60 us per row for 300 depth-3 trees (XGBoost: 500 us), and the ratio fell to
1.02-1.55, median 1.3 (``bench/results/serving_reasons_numpy_shap.json``).

Path-dependent TreeSHAP (Lundberg et al., the algorithm behind ``pred_contribs``), leaf by leaf:
a leaf of value v whose path from the root has the unique features P (a feature split twice on
the path is one element, its zero fractions multiplied), zero fractions z (child cover over
parent cover, XGBoost's ``sum_hessian``) and, for a row, one fractions o (1 if the row follows
every step of that feature, else 0) adds to each i in P::

    v * (o_i - z_i) * sum over S in P\\{i} of |S|! (|P|-|S|-1)! / |P|!
                                 * prod_{j in S} o_j * prod_{j in P\\S\\{i}} z_j

The sum over subsets is a polynomial product (an elementary-symmetric DP), vectorised over all
leaves of all trees, paths padded to the forest's depth. Since o is 0 or 1 per step, a leaf has
at most 2**depth answers, all computed once at load; a request only evaluates its splits and
gathers its leaves' answers. Forests whose table would pass ``TABLE_ENTRIES`` are left to
XGBoost (the default model, 300-600 trees of depth 3, fits by far). The bias is the base
margin plus each tree's cover-weighted mean leaf value. ``verified_contributions`` keeps the
result only if it equals XGBoost's ``pred_contribs`` on probe rows (missing values included)
within ``tolerance``.

A fork may delete this module and the lines of ``follower._fast_paths`` that use it (XGBoost
then gives the contributions of every request): a single-row request with reasons costs about
0.3 ms more (``docs/serving.md``, Reason codes).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fraud_detection.serving.fast_path import SMALL_BATCH_ROWS, TreeWalk, probe_rows

logger = logging.getLogger(__name__)

# The largest table of answers (leaves x 2**depth x depth numbers, 8 bytes each) built at load:
# 16 MB, 10,000 trees of depth 3 or 85 of depth 6. Larger forests are left to XGBoost: the DP run
# per request instead measured 1.9-11 ms per row for 300 trees of depth 3-6, slower than XGBoost.
TABLE_ENTRIES = 2**21
# Of the largest margin the forest can give (``tolerance``). XGBoost sums in float32: the worst
# differences measured were about 1.2e-7 of that (2e-6 to 8e-6 on 300-600-tree forests).
RELATIVE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class LeafPaths:
    """Every leaf of a forest with its path from the root, padded to the forest's depth."""

    node_feature: np.ndarray  # (inner nodes,) split feature of each inner node of all trees
    node_threshold: np.ndarray  # (inner nodes,) float32 threshold: x < threshold goes left
    node_default_left: np.ndarray  # (inner nodes,) where a missing value goes
    step_node: np.ndarray  # (leaves, depth) inner node of each step (padding: 0)
    step_left: np.ndarray  # (leaves, depth) the step goes to the left child
    step_slot: np.ndarray  # (leaves, depth) unique-feature slot of the step (padding: -1)
    slot_feature: np.ndarray  # (leaves, depth) feature of each slot (padding: n_features)
    slot_zero: np.ndarray  # (leaves, depth) product of the slot's zero fractions (padding: 1)
    slot_valid: np.ndarray  # (leaves, depth) the slot holds a feature of the path
    value: np.ndarray  # (leaves,) leaf value
    tree: np.ndarray  # (leaves,) the leaf's tree
    base_margin: float


@dataclass(frozen=True)
class TreeContributions:
    """Per-feature TreeSHAP contributions and bias of a binary:logistic forest, in NumPy."""

    paths: LeafPaths
    n_features: int
    bias: float
    # (leaves * 2**depth, depth): what leaf l adds to its slots when the row follows the steps
    # whose bits are set in pattern p, at row l * 2**depth + p.
    table: np.ndarray
    leaf_start: np.ndarray  # (leaves,) int32 l * 2**depth: leaf l's first row of ``table``
    node_bit: np.ndarray  # (inner nodes,) int32 2**(the node's depth): its bit in a pattern
    step_code: np.ndarray  # (depth, leaves) column of ``_codes`` that gives a step's bit

    def values(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(contributions (rows, features), bias (rows,)), float64, as
        ``Scorer.contributions_values`` gives them, for a few rows."""
        rows = np.asarray(values, dtype=np.float32)
        steps = self._codes(rows).take(self.step_code, axis=1)  # (rows, depth, leaves)
        pattern = self.leaf_start + steps.sum(axis=1, dtype=np.int32)
        shares = np.take(self.table, pattern, axis=0)  # (rows, leaves, depth)
        width = self.n_features + 1  # the last column collects the padding
        index = self.paths.slot_feature + width * np.arange(rows.shape[0])[:, None, None]
        summed = np.bincount(index.ravel(), shares.ravel(), minlength=width * rows.shape[0])
        contributions = summed.reshape(rows.shape[0], width)[:, : self.n_features]
        return contributions, np.full(rows.shape[0], self.bias)

    def _codes(self, rows: np.ndarray) -> np.ndarray:
        """(rows, 2 * inner nodes + 1): column n holds node n's bit if the row goes left there,
        column inner + n if it goes right, 0 otherwise; the last column is 0 (padding steps)."""
        paths = self.paths
        value = rows[:, paths.node_feature]
        go_left = np.where(np.isnan(value), paths.node_default_left, value < paths.node_threshold)
        left = go_left * self.node_bit
        padding = np.zeros((rows.shape[0], 1), dtype=np.int32)
        return np.concatenate((left, self.node_bit - left, padding), axis=1)


def slot_contributions(follows: np.ndarray, paths: LeafPaths, weights: np.ndarray) -> np.ndarray:
    """(rows, leaves, depth): what each leaf adds to the feature of each of its path's slots,
    given which steps each row follows (``follows``, (rows, leaves, depth) booleans)."""
    depth = paths.step_slot.shape[1]
    mine = paths.step_slot[:, :, None] == np.arange(depth)  # (leaves, step, slot)
    valid = paths.slot_valid
    # A slot's one fraction: the row follows every step of that feature (padding slots: 0).
    one = np.all(follows[:, :, :, None] | ~mine, axis=2) & valid
    zero = paths.slot_zero
    # polynomial[..., i, s]: sum over S of size s in P\{i} of prod o_S * prod z_(P\S\{i}).
    polynomial = np.zeros((*one.shape, depth))
    polynomial[..., 0] = 1.0
    others = ~np.eye(depth, dtype=bool)  # [i, j]: j is another slot than i
    for j in range(depth):
        z = np.where(others[:, j], zero[:, j : j + 1], 1.0)  # (leaves, i)
        o = np.where(others[:, j], one[:, :, j : j + 1], 0.0)  # (rows, leaves, i)
        shifted = polynomial[..., :-1] * o[..., None]
        polynomial = polynomial * z[..., None]
        polynomial[..., 1:] += shifted
    share = np.einsum("rlis,ls->rli", polynomial, weights)
    return paths.value[:, None] * (one - zero) * share * valid


def leaf_paths(booster: Any, walk: TreeWalk, n_features: int) -> LeafPaths | None:
    """The leaves and paths of ``booster`` (an ``xgboost.Booster`` that ``walk`` flattens: a
    plain binary:logistic forest of numerical splits); None if a node has no positive cover."""
    trees = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    inner_offset, nodes, leaves = 0, [], []
    for tree_number, tree in enumerate(trees):
        left, right = tree["left_children"], tree["right_children"]
        cover = tree["sum_hessian"]
        if min(cover) <= 0:
            return None
        inner = [node for node in range(len(left)) if left[node] != -1]
        number = {node: inner_offset + rank for rank, node in enumerate(inner)}
        inner_offset += len(inner)
        nodes += [
            (tree["split_indices"][n], tree["split_conditions"][n], tree["default_left"][n])
            for n in inner
        ]
        stack: list[tuple[int, list[tuple[int, bool, int, float]]]] = [(0, [])]
        while stack:  # (node, steps so far: inner node, goes left, feature, zero fraction)
            node, steps = stack.pop()
            if left[node] == -1:
                leaves.append((tree_number, float(tree["split_conditions"][node]), steps))
                continue
            feature = int(tree["split_indices"][node])
            for child, goes_left in ((left[node], True), (right[node], False)):
                step = (number[node], goes_left, feature, cover[child] / cover[node])
                stack.append((child, [*steps, step]))
    return _padded(nodes, leaves, n_features, float(walk.base_margin))


def _padded(
    nodes: list[tuple[int, float, bool]],
    leaves: list[tuple[int, float, list[tuple[int, bool, int, float]]]],
    n_features: int,
    base_margin: float,
) -> LeafPaths:
    depth = max(1, max(len(steps) for _, _, steps in leaves))
    shape = (len(leaves), depth)
    step_node, step_left = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=bool)
    step_slot = np.full(shape, -1, dtype=np.int64)
    slot_feature = np.full(shape, n_features, dtype=np.int64)
    slot_zero = np.ones(shape)
    for leaf, (_, _, steps) in enumerate(leaves):
        features: list[int] = []  # the path's unique features, in order of first split
        for position, (node, goes_left, feature, zero) in enumerate(steps):
            if feature not in features:
                features.append(feature)
            slot = features.index(feature)
            step_node[leaf, position], step_left[leaf, position] = node, goes_left
            step_slot[leaf, position] = slot
            slot_feature[leaf, slot] = feature
            slot_zero[leaf, slot] *= zero
    return LeafPaths(
        node_feature=np.asarray([node[0] for node in nodes], dtype=np.int64),
        node_threshold=np.asarray([node[1] for node in nodes], dtype=np.float32),
        node_default_left=np.asarray([node[2] for node in nodes], dtype=bool),
        step_node=step_node,
        step_left=step_left,
        step_slot=step_slot,
        slot_feature=slot_feature,
        slot_zero=slot_zero,
        slot_valid=slot_feature != n_features,
        value=np.asarray([value for _, value, _ in leaves]),
        tree=np.asarray([tree for tree, _, _ in leaves], dtype=np.int64),
        base_margin=base_margin,
    )


def shapley_weights(paths: LeafPaths) -> np.ndarray:
    """(leaves, depth): |S|!(|P|-|S|-1)!/|P|! for |S| = 0..depth-1, 0 from |S| = |P| on."""
    size = paths.slot_valid.sum(axis=1)
    depth = paths.slot_valid.shape[1]
    table = np.zeros((depth + 1, depth))
    for unique in range(1, depth + 1):
        for subset in range(unique):
            table[unique, subset] = (
                math.factorial(subset)
                * math.factorial(unique - subset - 1)
                / math.factorial(unique)
            )
    return table[size]


def tree_contributions(
    booster: Any, walk: TreeWalk, n_features: int, table_entries: int | None = None
) -> TreeContributions | None:
    """``TreeContributions`` of ``booster`` (``walk``: its ``fast_path.TreeWalk``); None for a
    booster ``leaf_paths`` does not take, or whose table of answers would exceed
    ``table_entries`` (default ``TABLE_ENTRIES``)."""
    paths = leaf_paths(booster, walk, n_features)
    if paths is None:
        return None
    leaves, depth = paths.step_slot.shape
    if leaves * 2**depth * depth > (TABLE_ENTRIES if table_entries is None else table_entries):
        logger.info("NumPy TreeSHAP: %d leaves of depth %d are too many: not used", leaves, depth)
        return None
    patterns = np.arange(2**depth)[:, None] >> np.arange(depth) & 1 == 1
    follows = np.broadcast_to(patterns[:, None, :], (2**depth, leaves, depth))
    shares = slot_contributions(follows, paths, shapley_weights(paths))
    real = paths.step_slot >= 0
    inner = paths.node_feature.size
    node_bit = np.zeros(inner, dtype=np.int32)
    node_bit[paths.step_node[real]] = np.broadcast_to(1 << np.arange(depth), real.shape)[real]
    step_code = np.where(paths.step_left, paths.step_node, paths.step_node + inner)
    # A tree's mean leaf value weighted by cover: each leaf's value times the product of the
    # zero fractions of its path (XGBoost's node mean values, expanded).
    bias = paths.base_margin + float(np.sum(paths.value * paths.slot_zero.prod(axis=1)))
    return TreeContributions(
        paths=paths,
        n_features=n_features,
        bias=bias,
        table=np.ascontiguousarray(shares.transpose(1, 0, 2)).reshape(-1, depth),
        leaf_start=(np.arange(leaves) * 2**depth).astype(np.int32),
        node_bit=node_bit,
        step_code=np.ascontiguousarray(np.where(real, step_code, 2 * inner).T.astype(np.intp)),
    )


def tolerance(contributions: TreeContributions) -> float:
    """How far from XGBoost's ``pred_contribs`` a contribution or bias may be: its float32
    sums round at about 6e-8 of the margin's scale per addition; ``RELATIVE_TOLERANCE`` of
    the largest margin the forest can give (base margin plus each tree's largest leaf)."""
    paths = contributions.paths
    largest = np.zeros(int(paths.tree.max()) + 1)
    np.maximum.at(largest, paths.tree, np.abs(paths.value))
    scale = abs(paths.base_margin) + float(largest.sum())
    return RELATIVE_TOLERANCE * max(1.0, scale)


def verified_contributions(
    booster: Any, walk: TreeWalk, n_features: int
) -> TreeContributions | None:
    """``tree_contributions`` of ``booster`` if they agree with XGBoost (``worst_difference``
    within ``tolerance``); None otherwise, logged at info (the caller keeps XGBoost). ``walk``
    is the booster's ``fast_path.TreeWalk``: only the forests it takes are taken here."""
    contributions = tree_contributions(booster, walk, n_features)
    if contributions is None:
        return None
    worst = worst_difference(contributions, booster, walk)
    allowed = tolerance(contributions)
    if worst > allowed:
        logger.info(
            "NumPy TreeSHAP differs from XGBoost by %.3g (tolerance %.3g): not used", worst, allowed
        )
        return None
    return contributions


def worst_difference(contributions: TreeContributions, booster: Any, walk: TreeWalk) -> float:
    """The largest absolute difference between ``contributions`` and XGBoost's
    ``pred_contribs`` (every feature's and the bias) on probe rows: every split threshold,
    either side of it, values between, and missing values."""
    rows = probe_rows(walk, contributions.n_features)
    rows[::5, ::3] = np.nan  # missing values take the default branch
    expected = np.column_stack(xgboost_contributions(booster, rows))
    # In the requests' sizes (also the fastest: a request's arrays are rows x leaves x depth).
    chunks = range(0, len(rows), SMALL_BATCH_ROWS)
    ours = np.vstack(
        [np.column_stack(contributions.values(rows[i : i + SMALL_BATCH_ROWS])) for i in chunks]
    )
    return float(np.max(np.abs(ours - expected)))


def xgboost_contributions(booster: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """XGBoost's own (contributions, bias) of ``rows``, as float64."""
    from xgboost import DMatrix

    data = DMatrix(rows, feature_names=booster.feature_names, nthread=1)
    raw = np.asarray(booster.predict(data, pred_contribs=True), dtype=np.float64)
    return raw[:, :-1], raw[:, -1]
