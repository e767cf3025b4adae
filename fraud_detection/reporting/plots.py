"""Evaluation plots, as matplotlib figures (object API: no pyplot state, no GUI backend).

Each function takes labels and one score array per model (candidate, and the champion when
there is one) so that the two are drawn on the same axes.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.calibration import CalibrationDisplay
from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

FIGURE_SIZE = (6.0, 4.5)


def _figure(title: str) -> tuple[Figure, object]:
    figure = Figure(figsize=FIGURE_SIZE, layout="constrained")
    axes = figure.subplots()
    axes.set_title(title)
    return figure, axes


def precision_recall_figure(labels: np.ndarray, scores: Mapping[str, np.ndarray]) -> Figure:
    figure, axes = _figure("Precision-recall (test)")
    for name, values in scores.items():
        PrecisionRecallDisplay.from_predictions(labels, values, name=name, ax=axes)
    return figure


def roc_figure(labels: np.ndarray, scores: Mapping[str, np.ndarray]) -> Figure:
    figure, axes = _figure("ROC (test)")
    for name, values in scores.items():
        RocCurveDisplay.from_predictions(labels, values, name=name, ax=axes)
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    return figure


def calibration_figure(labels: np.ndarray, scores: Mapping[str, np.ndarray]) -> Figure:
    figure, axes = _figure("Calibration (test)")
    for name, values in scores.items():
        # Quantile bins: with 1% fraud, uniform bins above 0.1 would be nearly empty.
        CalibrationDisplay.from_predictions(
            labels, values, n_bins=10, strategy="quantile", name=name, ax=axes
        )
    return figure


def savings_figure(
    thresholds: np.ndarray, savings: Mapping[str, np.ndarray], chosen_threshold: float
) -> Figure:
    figure, axes = _figure("Money saved vs decision threshold (test)")
    for name, values in savings.items():
        axes.plot(thresholds, values, label=name)
    axes.axvline(chosen_threshold, linestyle="--", color="grey", label="model threshold")
    axes.set_xscale("log")
    axes.set_xlabel("threshold on fraud probability")
    axes.set_ylabel("caught fraud amount - review costs")
    axes.legend()
    return figure


def feature_importance_figure(importance: pd.Series) -> Figure:
    figure = Figure(figsize=(6.0, 0.3 * len(importance) + 1.0), layout="constrained")
    axes = figure.subplots()
    axes.set_title("Feature importance (candidate)")
    if importance.empty:
        axes.text(0.5, 0.5, "not available for this kind of model", ha="center", va="center")
        axes.set_axis_off()
        return figure
    axes.barh(importance.index, importance.to_numpy())
    return figure


def mean_contribution_figure(means: pd.Series) -> Figure:
    """The global view of the reason codes: each feature's mean absolute contribution to the
    margin (log-odds) over the rows scored, largest at the top."""
    figure = Figure(figsize=(6.0, 0.3 * len(means) + 1.0), layout="constrained")
    axes = figure.subplots()
    axes.set_title("Mean |contribution| to the score (candidate, test window)")
    if means.empty:
        axes.text(0.5, 0.5, "not available for this kind of model", ha="center", va="center")
        axes.set_axis_off()
        return figure
    axes.barh(means.index, means.to_numpy())
    axes.set_xlabel("mean absolute contribution (log-odds)")
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
