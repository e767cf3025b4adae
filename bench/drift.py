"""The drift drill: does the monitor catch a simulated drift, and does retraining pay?

One simulation with a drift at a date (``--drift-kind``, default card testing: a fraud the
book does not have). A champion is trained, evaluated and registered on the days before the
quiet weeks (the normal pipeline's steps, in this process, against a temporary tracking store).
Then week by week, as a scheduled job would:

1. the week's transactions (with the history their features need) are scored by the model of
   each curve, as ``serve.py batch`` does (``score_batch``);
2. the monitor watches the week (``steps.monitor.monitor``, what ``monitor.py`` runs) once its
   labels have matured (``--as-of`` = week end + label delay): an alarm is a crossing;
3. the week's average precision of each curve is computed from its scores and labels.

"No retrain" scores every week with the first champion. "Retrain" runs the monitor with
``retrain=true``: an alarm trains, evaluates and registers on the latest ``champion_days``
days up to the week's end through the normal gate, and a promoted champion scores from the
week after next on (the monitor of week k runs when week k's labels are in, a week after it
ends, while week k+1 is being scored). ``false_alarms`` counts the alarms of the quiet weeks.
The steps run in this process (no launcher, no environment to build), so a week costs seconds
and a retraining tens of seconds on 2 cores (docs/monitoring.md, "Drift drill").

    python bench/drift.py --out bench/results/drift.json --plot docs/images/drift-drill.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parents[1]
if str(PROJECT_DIR) not in sys.path:  # run as a script from anywhere: find the package
    sys.path.insert(0, str(PROJECT_DIR))

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402

from fraud_detection import contract  # noqa: E402
from fraud_detection.config import (  # noqa: E402
    CHAMPION_ALIAS,
    DEFAULT_DELAY_DAYS,
    DEFAULT_MODEL_NAME,
    BatchConfig,
    ConfigError,
    DataConfig,
    EvaluateConfig,
    GateConfig,
    ModelConfig,
    PipelineConfig,
    RegisterConfig,
    SimulatorConfig,
    TrackingConfig,
    TrainConfig,
)
from fraud_detection.config.fields import build_config, flatten  # noqa: E402
from fraud_detection.contract import Step, step_filter  # noqa: E402
from fraud_detection.data.simulator import simulate_transactions  # noqa: E402
from fraud_detection.modelling.pyfunc import PROBABILITY_COLUMN  # noqa: E402
from fraud_detection.serving.batch import score_batch  # noqa: E402
from fraud_detection.steps.evaluate import evaluate  # noqa: E402
from fraud_detection.steps.register import register  # noqa: E402
from fraud_detection.steps.train import train  # noqa: E402

logger = logging.getLogger("bench.drift")

EXPERIMENT = "drift-drill"
TIME, LABEL = "TX_DATETIME", "TX_FRAUD"
# What the features of a week need before it: the longest card window (30 days) and the
# terminal windows' end, the label delay later (7). The monitor treats as much as history.
HISTORY_DAYS = 30 + DEFAULT_DELAY_DAYS
WEEK = pd.Timedelta(days=7)


@dataclass(frozen=True)
class Drill:
    """The simulation and the calendar of the drill."""

    # Two fifths of the book's population: 16 weeks and their retrainings in minutes.
    n_customers: int = 2_000
    n_terminals: int = 4_000
    seed: int = 42
    start_date: str = "2018-04-01"
    champion_days: int = (
        84  # the champion's data: 12 weeks (37 days of feature history, 5 of split)
    )
    quiet_weeks: int = 8
    drift_weeks: int = 8
    drift_kind: str = "scenario"
    drift_strength: float = 1.0

    @property
    def start(self) -> pd.Timestamp:
        return pd.Timestamp(self.start_date)

    @property
    def drift_start(self) -> pd.Timestamp:
        return self.start + pd.Timedelta(days=self.champion_days) + self.quiet_weeks * WEEK

    @property
    def week_starts(self) -> list[pd.Timestamp]:
        first = self.start + pd.Timedelta(days=self.champion_days)
        return [first + k * WEEK for k in range(self.quiet_weeks + self.drift_weeks)]

    def simulator(self) -> SimulatorConfig:
        n_days = self.champion_days + 7 * (self.quiet_weeks + self.drift_weeks)
        return SimulatorConfig(
            n_customers=self.n_customers,
            n_terminals=self.n_terminals,
            n_days=n_days,
            start_date=self.start_date,
            seed=self.seed,
            drift_start=f"{self.drift_start:%Y-%m-%d}",
            drift_kind=self.drift_kind,
            drift_strength=self.drift_strength,
        )


def write_recent(table: pd.DataFrame, end: pd.Timestamp, days: int, path: Path) -> Path:
    """The transactions of the ``days`` days before ``end``, as a Parquet file: the recent
    extract a retraining job reads at that time."""
    rows = (table[TIME] >= end - pd.Timedelta(days=days)) & (table[TIME] < end)
    table[rows].to_parquet(path, index=False)
    return path


def week_slice(table: pd.DataFrame, start: pd.Timestamp, path: Path) -> Path:
    """The week from ``start`` with the history its features need before it."""
    rows = (table[TIME] >= start - pd.Timedelta(days=HISTORY_DAYS)) & (table[TIME] < start + WEEK)
    table[rows].to_parquet(path, index=False)
    return path


def week_average_precision(scored: Path, start: pd.Timestamp) -> float:
    """Average precision of the scores of the week from ``start`` (its labels, all rows)."""
    rows = pd.read_parquet(scored)
    week = rows[(rows[TIME] >= start) & (rows[TIME] < start + WEEK)]
    return float(average_precision_score(week[LABEL], week[PROBABILITY_COLUMN]))


def run_pipeline_in_process(config: PipelineConfig) -> str:
    """Train, evaluate and register as ``main`` chains them, in this process (no launcher)."""
    values = flatten(config)
    train(build_config(TrainConfig, values))
    train_run = _latest_run(Step.TRAIN)
    evaluate(build_config(EvaluateConfig, {**values, "run_id": train_run}))
    register(build_config(RegisterConfig, {**values, "run_id": _latest_run(Step.EVALUATE)}))
    return f"pipeline on {config.data.data}: train run {train_run}"


def _latest_run(step: Step) -> str:
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    runs = MlflowClient().search_runs(
        [experiment.experiment_id],
        filter_string=step_filter(step),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id


def champion_version() -> int | None:
    client = MlflowClient()
    try:
        return int(client.get_model_version_by_alias(DEFAULT_MODEL_NAME, CHAMPION_ALIAS).version)
    except mlflow.exceptions.MlflowException:
        return None


def score(version: int, slice_path: Path, out: Path) -> Path:
    """``serve.py batch`` with version ``version`` of the registered model."""
    uri = f"models:/{DEFAULT_MODEL_NAME}/{version}"
    score_batch(BatchConfig(model_uri=uri, input=str(slice_path), output=str(out)))
    return out


def train_first_champion(
    table: pd.DataFrame, drill: Drill, workdir: Path, model: ModelConfig, gate: GateConfig
) -> int:
    """Train, evaluate and register on the days before the first watched week; return the
    version that became @champion."""
    start = drill.week_starts[0]
    data = write_recent(table, start, drill.champion_days, workdir / "champion-data.parquet")
    pipeline = PipelineConfig(
        tracking=TrackingConfig(experiment_name=EXPERIMENT),
        data=DataConfig(data=str(data)),
        model=model,
        gate=gate,
    )
    run_pipeline_in_process(pipeline)
    version = champion_version()
    if version is None:
        raise SystemExit("the gate refused the first champion: there is no drill without one")
    return version


@dataclass(frozen=True)
class Watch:
    """What the monitor said about one week: every crossing, and the score reference used."""

    alarm: bool
    message: str
    crossings: tuple[str, ...] = ()
    score_reference: str = ""


def watch(scored: Path, version: int, start: pd.Timestamp, retrain_data: Path | None) -> Watch:
    """The monitor on one week's scored file once its labels have matured (week end + label
    delay); with ``retrain_data``, retrain=true on that data."""
    # The monitor entry point (issue 16): imported here, so the rest runs without it.
    from fraud_detection.config import MonitorConfig
    from fraud_detection.errors import ThresholdCrossedError
    from fraud_detection.steps import monitor as monitor_step

    config = MonitorConfig(
        tracking=TrackingConfig(experiment_name=EXPERIMENT),
        scored=str(scored),
        model_uri=f"models:/{DEFAULT_MODEL_NAME}/{version}",
        window_days=7,
        as_of=f"{start + WEEK + pd.Timedelta(days=DEFAULT_DELAY_DAYS)}",
        retrain=retrain_data is not None,
        data=str(retrain_data or ""),
    )
    try:
        report, alarm = monitor_step.monitor(config, run_pipeline_in_process), False
    except ThresholdCrossedError as crossed:
        report, alarm = str(crossed), True
    tags = MlflowClient().get_run(_latest_run(Step.MONITOR)).data.tags
    lines = tags.get(contract.MONITOR_CROSSINGS_TAG, "")
    return Watch(
        alarm,
        report,
        tuple(line.split(": ", 1)[1] for line in lines.splitlines()),
        tags.get(contract.MONITOR_SCORE_REFERENCE_TAG, ""),
    )


@dataclass
class Curve:
    """One curve of the drill: per week, the model that scored it, its AP, the monitor's word."""

    versions: list[int] = dataclasses.field(default_factory=list)
    average_precision: list[float] = dataclasses.field(default_factory=list)
    alarms: list[bool] = dataclasses.field(default_factory=list)
    messages: list[str] = dataclasses.field(default_factory=list)
    crossings: list[list[str]] = dataclasses.field(default_factory=list)
    score_references: list[str] = dataclasses.field(default_factory=list)

    def scored(self, version: int, average_precision: float) -> None:
        self.versions.append(version)
        self.average_precision.append(round(average_precision, 4))

    def watched(self, seen: Watch) -> None:
        self.alarms.append(seen.alarm)
        self.messages.append(seen.message)
        self.crossings.append(list(seen.crossings))
        self.score_references.append(seen.score_reference)


class Week:
    """One week of the drill: its slice of transactions, scored by any version once."""

    def __init__(self, table: pd.DataFrame, index: int, start: pd.Timestamp, workdir: Path):
        self.index, self.start, self.workdir = index, start, workdir
        self.slice = week_slice(table, start, workdir / f"week-{index:02d}.parquet")
        self._scored: dict[int, Path] = {}

    def scored_by(self, version: int) -> Path:
        if version not in self._scored:
            out = self.workdir / f"week-{self.index:02d}-scored-v{version}.parquet"
            self._scored[version] = score(version, self.slice, out)
        return self._scored[version]

    def average_precision(self, version: int) -> float:
        return week_average_precision(self.scored_by(version), self.start)


def run_drill(drill: Drill, workdir: Path, model: ModelConfig, gate: GateConfig) -> dict[str, Any]:
    """The whole drill in ``workdir`` (the current tracking store); returns its figures."""
    table = simulate_transactions(drill.simulator())
    starts = drill.week_starts
    first = train_first_champion(table, drill, workdir, model, gate)
    no_retrain, retrain = Curve(), Curve()
    takes_over: dict[int, int] = {}  # week index -> the retrained champion that scores it on
    retrains: list[dict[str, Any]] = []
    current = first
    for index, start in enumerate(starts):
        week = Week(table, index, start, workdir)
        current = takes_over.get(index, current)
        no_retrain.scored(first, week.average_precision(first))
        retrain.scored(current, week.average_precision(current))
        # Every champion learns from as many days: the latest ones when its monitor alarmed.
        until = write_recent(
            table, start + WEEK, drill.champion_days, workdir / f"recent-{index:02d}.parquet"
        )
        before = champion_version()
        seen = watch(week.scored_by(current), current, start, until)
        retrain.watched(seen)
        no_retrain.watched(
            seen if current == first else watch(week.scored_by(first), first, start, None)
        )
        if seen.alarm:
            after = champion_version()
            promoted = after != before
            gate = MlflowClient().get_run(_latest_run(Step.EVALUATE)).data.tags
            retrains.append(
                {
                    "week": f"{start:%Y-%m-%d}",
                    "watched_version": current,
                    "champion_after": after,
                    "promoted": promoted,
                    "gate": gate.get(contract.GATE_REPORT_TAG, ""),
                }
            )
            if promoted:
                takes_over[index + 2] = after
        logger.info("week %d (%s): %s", index, f"{start:%Y-%m-%d}", _week_line(no_retrain, retrain))
    return figures(drill, no_retrain, retrain, retrains)


def _week_line(no_retrain: Curve, retrain: Curve) -> str:
    return (
        f"AP {no_retrain.average_precision[-1]:.3f} without retraining "
        f"(alarm {no_retrain.alarms[-1]}), {retrain.average_precision[-1]:.3f} with "
        f"(version {retrain.versions[-1]}, alarm {retrain.alarms[-1]})"
    )


def figures(
    drill: Drill, no_retrain: Curve, retrain: Curve, retrains: list[dict[str, Any]]
) -> dict[str, Any]:
    """The drill's figures: the three asked for first, then everything per week."""
    quiet = drill.quiet_weeks

    def mean(values: list[float]) -> float:
        return round(float(np.mean(values)), 4)

    return {
        "ap_no_retrain_mean": mean(no_retrain.average_precision[quiet:]),
        "ap_retrain_mean": mean(retrain.average_precision[quiet:]),
        "false_alarms": int(sum(no_retrain.alarms[:quiet])),
        "quiet_weeks": quiet,
        "drift_weeks": drill.drift_weeks,
        "drift_start": f"{drill.drift_start:%Y-%m-%d}",
        "ap_quiet_mean": mean(no_retrain.average_precision[:quiet]),
        "alarms_after_drift_no_retrain": int(sum(no_retrain.alarms[quiet:])),
        "first_alarm_week_after_drift": next(
            (k for k, alarm in enumerate(no_retrain.alarms[quiet:]) if alarm), None
        ),
        "week_starts": [f"{start:%Y-%m-%d}" for start in drill.week_starts],
        "no_retrain": dataclasses.asdict(no_retrain),
        "retrain": dataclasses.asdict(retrain),
        "retrainings": len(retrains),
        "retrainings_promoted": sum(1 for item in retrains if item["promoted"]),
        "retrains": retrains,
        "settings": dataclasses.asdict(drill),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    """Both curves of weekly average precision, the drift's start and the alarms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weeks = pd.to_datetime(results["week_starts"])
    figure, axes = plt.subplots(figsize=(8, 4))
    for key, label, style in (
        ("no_retrain", "no retraining", "o-"),
        ("retrain", "monitor-triggered retraining", "s-"),
    ):
        curve = results[key]
        axes.plot(weeks, curve["average_precision"], style, label=label)
        alarmed = [w for w, alarm in zip(weeks, curve["alarms"], strict=True) if alarm]
        values = [
            v for v, alarm in zip(curve["average_precision"], curve["alarms"], strict=True) if alarm
        ]
        axes.scatter(alarmed, values, marker="x", s=80, color="red", zorder=3)
    axes.axvline(
        pd.Timestamp(results["drift_start"]), color="grey", linestyle="--", label="drift starts"
    )
    axes.scatter([], [], marker="x", color="red", label="monitor alarm")
    axes.set_ylabel("average precision of the week")
    axes.set_ylim(0, 1)
    axes.set_title(f"Drift drill: {results['settings']['drift_kind']} drift, weekly windows")
    axes.legend(loc="lower left")
    figure.autofmt_xdate()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mlflow": mlflow.__version__,
    }


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    defaults = Drill()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="write the figures as JSON")
    parser.add_argument("--plot", type=Path, help="draw both curves into this PNG")
    for item in dataclasses.fields(Drill):
        parser.add_argument(
            "--" + item.name.replace("_", "-"),
            type=type(getattr(defaults, item.name)),
            default=getattr(defaults, item.name),
            help="default %(default)s",
        )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    arguments = _arguments(argv)
    try:
        drill = Drill(
            **{item.name: getattr(arguments, item.name) for item in dataclasses.fields(Drill)}
        )
        drill.simulator()  # a ConfigError on a bad drift
    except ConfigError as error:
        logger.error("Invalid parameter: %s", error)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="drift-drill-") as scratch:
        workdir = Path(scratch)
        mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
        MlflowClient().create_experiment(
            EXPERIMENT, artifact_location=(workdir / "artifacts").as_uri()
        )
        # The template's model kinds without the grid: 16 weeks of retraining in minutes.
        results = run_drill(drill, workdir, ModelConfig(grid="none"), GateConfig())
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] = machine()
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(results, indent=2) + "\n")
    if arguments.plot:
        plot(results, arguments.plot)
    for key in ("ap_no_retrain_mean", "ap_retrain_mean", "false_alarms", "seconds"):
        print(f"{key:<24} {results[key]}")  # the command's report
    return 0


if __name__ == "__main__":
    sys.exit(main())
