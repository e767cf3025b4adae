"""``MLproject``, generated from the config dataclasses: one source of truth for parameters.

    python -m fraud_detection.config.mlproject           # rewrite MLproject
    python -m fraud_detection.config.mlproject --check   # exit 1 if MLproject is stale

(``make mlproject`` runs the first.) Adding a parameter is one field in ``parameters.py`` and
a regeneration; ``tests/config`` fails when the committed file is stale.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraud_detection.config.fields import leaves
from fraud_detection.config.parameters import (
    EvaluateConfig,
    MonitorConfig,
    PipelineConfig,
    RegisterConfig,
    TrainConfig,
)

MLPROJECT = Path(__file__).resolve().parents[2] / "MLproject"
TYPES = {str: "string", int: "int", float: "float", bool: "bool"}


@dataclass(frozen=True)
class EntryPoint:
    name: str
    config_type: type
    script: str
    summary: str


ENTRY_POINTS = (
    EntryPoint(
        "main",
        PipelineConfig,
        "main.py",
        "The whole pipeline: launches train, evaluate and register as nested project runs.",
    ),
    EntryPoint(
        "train",
        TrainConfig,
        "train.py",
        "Fit candidates, pick the best on validation data, log one pyfunc model.",
    ),
    EntryPoint(
        "evaluate",
        EvaluateConfig,
        "evaluate.py",
        "Score a train run's model on its test period, beside the current @champion.",
    ),
    EntryPoint(
        "register",
        RegisterConfig,
        "register.py",
        "Register the evaluated model; move @champion only when the gate holds.",
    ),
    EntryPoint(
        "monitor",
        MonitorConfig,
        "monitor.py",
        "Drift and delayed-label performance of a model on files it scored; retrain on alarm.",
    ),
)

HEADER = """\
# MLflow Project: credit-card fraud detection (train -> evaluate -> register).
# GENERATED from fraud_detection/config/parameters.py (`make mlproject`, or
# `python -m fraud_detection.config.mlproject`): change the dataclasses, then regenerate.
# `python <script>.py --help` describes each parameter.
name: fraud-detection

python_env: python_env.yaml

entry_points:"""


def _value(value: Any) -> str:
    """A default as YAML reads it back to the same Python value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _entry_point(entry: EntryPoint) -> list[str]:
    parameters = list(leaves(entry.config_type))
    lines = [f"  # {entry.summary}", f"  {entry.name}:", "    parameters:"]
    lines += [
        f"      {leaf.name}: {{type: {TYPES[leaf.type]}, default: {_value(leaf.default)}}}"
        for leaf in parameters
    ]
    lines += ["    command: >-", f"      python {entry.script}"]
    lines += [f"      --{leaf.name.replace('_', '-')} {{{leaf.name}}}" for leaf in parameters]
    return lines


def render() -> str:
    """The whole MLproject file."""
    blocks = ["\n".join(_entry_point(entry)) for entry in ENTRY_POINTS]
    return HEADER + "\n" + "\n\n".join(blocks) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that it is current")
    parser.add_argument("--path", type=Path, default=MLPROJECT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.path.read_text() if args.path.exists() else ""
        if current != text:
            print(f"{args.path} is stale: run `python -m fraud_detection.config.mlproject`")
            return 1
        print(f"{args.path} is current")
        return 0
    args.path.write_text(text)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
