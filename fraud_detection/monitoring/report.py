"""The monitoring run's HTML report: figures per window as charts, the crossings as a list.

Self-contained (the charts are embedded PNGs), so it opens from the run's artifacts as it is.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from matplotlib.figure import Figure

from fraud_detection.monitoring.checks import (
    ALERT_RATE_RATIO,
    AP_RATIO,
    PSI_PREFIX,
    SCORE_PSI,
    Crossing,
    Thresholds,
    WindowFigures,
)
from fraud_detection.reporting.plots import png_bytes

REPORT_ARTIFACT = "monitoring_report.html"


def _chart(
    figures: Sequence[WindowFigures], keys: Sequence[str], title: str, limits: Sequence[float]
) -> str:
    figure = Figure(figsize=(7.0, 3.8), layout="constrained")
    axes = figure.subplots()
    axes.set_title(title)
    names = [item.window.name for item in figures]
    for key in keys:
        values = [item.metrics.get(key, float("nan")) for item in figures]
        axes.plot(range(len(names)), values, marker="o", label=key.removeprefix(PSI_PREFIX))
    for limit in limits:
        axes.axhline(limit, color="red", linestyle="--", linewidth=1)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    if len(keys) > 1:
        axes.legend(fontsize=6, ncols=2)
    encoded = base64.b64encode(png_bytes(figure)).decode()
    return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}">'


def render_report(
    model: str,
    figures: Sequence[WindowFigures],
    found: Sequence[Crossing],
    thresholds: Thresholds,
) -> str:
    """The whole HTML page."""
    features = sorted({key for item in figures for key in item.metrics if key.startswith("psi_")})
    charts = [
        _chart(figures, features, "PSI per feature", [thresholds.psi]),
        _chart(figures, [SCORE_PSI], "PSI of the score", [thresholds.score_psi]),
        _chart(
            figures,
            [ALERT_RATE_RATIO],
            "Alert rate / reference alert rate",
            [thresholds.alert_rate_ratio, 1 / thresholds.alert_rate_ratio],
        ),
        _chart(
            figures,
            [AP_RATIO],
            "Average precision / test (matured labels)",
            [thresholds.min_ap_ratio],
        ),
    ]
    lines = "".join(f"<li>{html.escape(item.line())}</li>" for item in found) or "<li>none</li>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Monitoring report</title>"
        "</head><body>"
        f"<h1>Monitoring {html.escape(model)}</h1>"
        f"<p>{len(figures)} window(s); thresholds crossed:</p><ul>{lines}</ul>"
        + "".join(f"<p>{chart}</p>" for chart in charts)
        + "</body></html>"
    )
