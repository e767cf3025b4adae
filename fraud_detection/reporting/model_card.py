"""A model card for each evaluation: Markdown for the repository, HTML for the MLflow UI.

Both are rendered from one ``ModelCard`` value. The HTML embeds its images, so the artifact
viewer shows it complete; the Markdown links the plot artifacts logged beside it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelCard:
    title: str
    lineage: dict[str, str]  # what, where from: runs, model id, data source and fingerprint
    windows: dict[str, str]  # window name -> "first day .. last day"
    decision: dict[str, str]  # threshold, review cost, expected savings
    metrics: list[tuple[str, float, float | None]]  # (name, candidate, champion or None)
    champion_label: str  # e.g. "champion v3", or "no champion"
    gate: list[tuple[str, bool, str]]  # (criterion, passed, detail)
    plots: dict[str, bytes] = field(default_factory=dict)  # artifact file name -> PNG
    plots_note: str = ""  # why some plots are not drawn (engine=spark), shown above them
    # The reason codes' global view: (feature, mean |contribution| in log-odds), largest first;
    # empty for a model kind without contributions (the random-forest baseline).
    contributions: list[tuple[str, float]] = field(default_factory=list)


CONTRIBUTIONS_TITLE = "Reason codes: mean absolute contribution on the test window"
CONTRIBUTIONS_MISSING = "Not computed: this kind of model has no per-feature contributions."


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def to_markdown(card: ModelCard) -> str:
    lines = [f"# {card.title}", "", "## Lineage", ""]
    lines += [f"- **{key}**: `{value}`" for key, value in card.lineage.items()]
    lines += ["", "## Data windows", ""]
    lines += [f"- **{key}**: {value}" for key, value in card.windows.items()]
    lines += ["", "## Decision", ""]
    lines += [f"- **{key}**: {value}" for key, value in card.decision.items()]
    lines += ["", "## Test metrics", "", f"| metric | candidate | {card.champion_label} |"]
    lines += ["|---|---|---|"]
    lines += [
        f"| {name} | {_number(ours)} | {_number(theirs)} |" for name, ours, theirs in card.metrics
    ]
    lines += ["", "## Promotion gate", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'} {name}: {detail}" for name, ok, detail in card.gate]
    lines += ["", f"## {CONTRIBUTIONS_TITLE}", ""]
    if card.contributions:
        lines += ["| feature | mean abs. contribution (log-odds) |", "|---|---|"]
        lines += [f"| {name} | {_number(value)} |" for name, value in card.contributions]
    else:
        lines.append(CONTRIBUTIONS_MISSING)
    lines += ["", "## Plots", ""]
    lines += [card.plots_note, ""] if card.plots_note else []
    lines += [f"![{name}]({name})" for name in card.plots]
    return "\n".join(lines) + "\n"


def to_html(card: ModelCard) -> str:
    escape = html.escape

    def items(mapping: dict[str, str], code: bool = False) -> str:
        wrap = (lambda v: f"<code>{escape(v)}</code>") if code else escape
        return "".join(f"<li><b>{escape(k)}</b>: {wrap(v)}</li>" for k, v in mapping.items())

    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{_number(ours)}</td><td>{_number(theirs)}</td></tr>"
        for name, ours, theirs in card.metrics
    )
    gate = "".join(
        f"<li class={'pass' if ok else 'fail'}>{'PASS' if ok else 'FAIL'} "
        f"{escape(name)}: {escape(detail)}</li>"
        for name, ok, detail in card.gate
    )
    images = "".join(
        f'<figure><img alt="{escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"><figcaption>{escape(name)}</figcaption></figure>'
        for name, png in card.plots.items()
    )
    note = f"<p>{escape(card.plots_note)}</p>" if card.plots_note else ""
    contributions = (
        "<table><tr><th>feature</th><th>mean abs. contribution (log-odds)</th></tr>"
        + "".join(
            f"<tr><td>{escape(name)}</td><td>{_number(value)}</td></tr>"
            for name, value in card.contributions
        )
        + "</table>"
        if card.contributions
        else f"<p>{escape(CONTRIBUTIONS_MISSING)}</p>"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{escape(card.title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 0.3em 0.6em; }}
.pass {{ color: #1a7f37; }} .fail {{ color: #cf222e; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 28em; }}
</style></head><body>
<h1>{escape(card.title)}</h1>
<h2>Lineage</h2><ul>{items(card.lineage, code=True)}</ul>
<h2>Data windows</h2><ul>{items(card.windows)}</ul>
<h2>Decision</h2><ul>{items(card.decision)}</ul>
<h2>Test metrics</h2>
<table><tr><th>metric</th><th>candidate</th><th>{escape(card.champion_label)}</th></tr>{rows}</table>
<h2>Promotion gate</h2><ul>{gate}</ul>
<h2>{escape(CONTRIBUTIONS_TITLE)}</h2>{contributions}
<h2>Plots</h2>{note}{images}
</body></html>
"""
