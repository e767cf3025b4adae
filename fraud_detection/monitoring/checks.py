"""Windows of scored transactions measured against a model's reference: pure, no I/O.

``cut_windows`` splits featured, scored rows into consecutive windows; ``measure_window``
computes a window's drift (PSI per feature and of the score), its alert rate and, when its
labels have matured, its realised performance with the same metric code as evaluate
(``modelling.metrics``); ``crossings`` compares the figures with the thresholds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fraud_detection.errors import DataError
from fraud_detection.modelling.metrics import fraud_metrics, savings
from fraud_detection.monitoring.drift import psi_against
from fraud_detection.monitoring.profile import ReferenceProfile

# A reference alert rate of 0 would make every ratio infinite: floor it (1 alert in 10,000).
ALERT_RATE_FLOOR = 1e-4
PSI_PREFIX = "psi_"
SCORE_PSI = "score_psi"
ALERT_RATE = "alert_rate"
ALERT_RATE_RATIO = "alert_rate_ratio"
AP_RATIO = "average_precision_ratio"


@dataclass(frozen=True)
class Thresholds:
    psi: float
    score_psi: float
    alert_rate_ratio: float
    min_ap_ratio: float


@dataclass(frozen=True)
class Window:
    index: int
    start: pd.Timestamp
    end: pd.Timestamp
    rows: pd.DataFrame
    labels_matured: bool

    @property
    def name(self) -> str:
        return f"{self.start:%Y-%m-%d}..{self.end - pd.Timedelta(seconds=1):%Y-%m-%d}"


@dataclass(frozen=True)
class Crossing:
    window: str
    figure: str
    value: float
    threshold: float
    above: bool  # crossed by going above the threshold (drift), or below it (performance)

    def line(self) -> str:
        relation = ">" if self.above else "<"
        return (
            f"window {self.window}: {self.figure} = {self.value:.4f} {relation} "
            f"threshold {self.threshold:.4f}"
        )


@dataclass(frozen=True)
class WindowFigures:
    window: Window
    metrics: dict[str, float] = field(default_factory=dict)


def cut_windows(
    rows: pd.DataFrame,
    time_column: str,
    first_start: pd.Timestamp,
    length: pd.Timedelta,
    label_delay: pd.Timedelta,
    as_of: pd.Timestamp,
    source: str,
) -> list[Window]:
    """Consecutive windows of ``length`` from ``first_start`` that the rows cover completely.

    Raises:
        DataError: no complete window, or a window without rows (a gap in the file).
    """
    times = pd.DatetimeIndex(rows[time_column])
    covered_until = times.max().floor("D") + pd.Timedelta(days=1)
    windows: list[Window] = []
    start = first_start
    while start + length <= covered_until:
        end = start + length
        inside = rows[(times >= start) & (times < end)]
        window = Window(len(windows), start, end, inside, end + label_delay <= as_of)
        if inside.empty:
            raise DataError(f"{source}: window {window.name} has no transactions")
        windows.append(window)
        start = end
    if not windows:
        raise DataError(
            f"{source}: no complete window of {length.days} days from {first_start:%Y-%m-%d} "
            f"(the file ends {times.max():%Y-%m-%d %H:%M}; the feature history before it is "
            "not monitored)"
        )
    return windows


def measure_window(
    window: Window,
    reference: ReferenceProfile,
    features: Sequence[str],
    columns: Mapping[str, str],
    review_cost: float,
    baseline_average_precision: float | None = None,
) -> dict[str, float]:
    """A window's figures. ``columns`` names the score, label, amount, day and card columns;
    the average precision is also given as a share of ``baseline_average_precision``."""
    rows = window.rows
    metrics = {
        f"{PSI_PREFIX}{name}": psi_against(reference.features[name], rows[name].to_numpy(float))
        for name in features
    }
    scores = rows[columns["score"]].to_numpy(np.float64)
    metrics[SCORE_PSI] = psi_against(reference.score, scores)
    alert_rate = float(np.mean(scores >= reference.threshold))
    metrics[ALERT_RATE] = alert_rate
    metrics[ALERT_RATE_RATIO] = alert_rate / max(reference.alert_rate, ALERT_RATE_FLOOR)
    metrics["rows"] = float(len(rows))
    labels = rows.get(columns["label"])
    if window.labels_matured and labels is not None and labels.notna().all():
        if labels.nunique() == 2:
            cards = columns["card"] in rows
            metrics.update(
                fraud_metrics(
                    labels.to_numpy(int),
                    scores,
                    days=rows[columns["day"]] if cards else None,
                    customers=rows[columns["card"]] if cards else None,
                )
            )
        decisions = scores >= reference.threshold
        metrics["savings"] = savings(labels, decisions, rows[columns["amount"]], review_cost)
    if baseline_average_precision and "average_precision" in metrics:
        metrics[AP_RATIO] = metrics["average_precision"] / baseline_average_precision
    return metrics


def crossings(figures: Sequence[WindowFigures], thresholds: Thresholds) -> list[Crossing]:
    """Every figure of every window that is past its threshold, in window order."""
    found: list[Crossing] = []
    for item in figures:
        name, metrics = item.window.name, item.metrics
        for key, value in metrics.items():
            if key.startswith(PSI_PREFIX) and value > thresholds.psi:
                found.append(Crossing(name, key, value, thresholds.psi, above=True))
        if metrics[SCORE_PSI] > thresholds.score_psi:
            found.append(Crossing(name, SCORE_PSI, metrics[SCORE_PSI], thresholds.score_psi, True))
        ratio = metrics[ALERT_RATE_RATIO]
        if ratio > thresholds.alert_rate_ratio:
            found.append(Crossing(name, ALERT_RATE_RATIO, ratio, thresholds.alert_rate_ratio, True))
        if ratio < 1 / thresholds.alert_rate_ratio:
            low = 1 / thresholds.alert_rate_ratio
            found.append(Crossing(name, ALERT_RATE_RATIO, ratio, low, above=False))
        if AP_RATIO in metrics and metrics[AP_RATIO] < thresholds.min_ap_ratio:
            found.append(
                Crossing(name, AP_RATIO, metrics[AP_RATIO], thresholds.min_ap_ratio, False)
            )
    return found
