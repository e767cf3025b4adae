"""The drift drill (bench/drift.py) on tiny data: its calendar, its week files, and the curve
without retraining, which needs no monitor: card testing after the drift pulls the first
champion's weekly average precision down."""

from __future__ import annotations

import importlib.util
import itertools
import logging
import re
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest

from fraud_detection.data.simulator import SCENARIO_CARD_TESTING, simulate_transactions
from tests.support import PROJECT_DIR
from tests.support.pipeline import FAST_MODEL, LENIENT_GATE

_SPEC = importlib.util.spec_from_file_location("drift_bench", PROJECT_DIR / "bench" / "drift.py")
drift_bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = drift_bench  # dataclasses look their module up there
_SPEC.loader.exec_module(drift_bench)

TINY = drift_bench.Drill(
    n_customers=500, n_terminals=1_000, quiet_weeks=2, drift_weeks=2, drift_strength=3.0
)


def test_the_calendar_leaves_quiet_weeks_between_the_champion_and_the_drift():
    drill = drift_bench.Drill()
    starts = drill.week_starts
    assert len(starts) == drill.quiet_weeks + drill.drift_weeks == 16
    assert starts[0] == pd.Timestamp("2018-04-01") + pd.Timedelta(days=drill.champion_days)
    assert starts[drill.quiet_weeks] == drill.drift_start == pd.Timestamp("2018-08-19")
    assert all(b - a == pd.Timedelta(days=7) for a, b in itertools.pairwise(starts))
    simulator = drill.simulator()
    # The simulation ends with the last watched week, and drifts from the first drift week.
    assert simulator.n_days == drill.champion_days + 7 * 16 == 196
    assert simulator.drift_day == drill.champion_days + 7 * drill.quiet_weeks
    assert (simulator.drift_kind, simulator.drift_strength) == ("scenario", 1.0)


def test_a_week_file_holds_the_week_and_the_history_its_features_need(tmp_path):
    table = simulate_transactions(TINY.simulator())
    start = TINY.week_starts[1]
    rows = pd.read_parquet(drift_bench.week_slice(table, start, tmp_path / "week.parquet"))
    history = pd.Timedelta(days=drift_bench.HISTORY_DAYS)
    assert drift_bench.HISTORY_DAYS == 37  # the 30-day window, 7 days before the row
    assert rows["TX_DATETIME"].min().floor("D") == start - history
    assert rows["TX_DATETIME"].max() < start + pd.Timedelta(days=7)
    expected = table[(table["TX_DATETIME"] >= start - history)]
    assert len(rows) == (expected["TX_DATETIME"] < start + pd.Timedelta(days=7)).sum()
    path = drift_bench.write_recent(table, start, 20, tmp_path / "recent.parquet")
    recent = pd.read_parquet(path)
    assert recent["TX_DATETIME"].max() < start
    assert recent["TX_DATETIME"].min().floor("D") == start - pd.Timedelta(days=20)
    after = table["TX_DATETIME"] >= start - pd.Timedelta(days=20)
    assert len(recent) == (after & (table["TX_DATETIME"] < start)).sum()


def test_the_curve_without_retraining_drops_after_the_drift(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    table = simulate_transactions(TINY.simulator())
    assert (table["TX_FRAUD_SCENARIO"] == SCENARIO_CARD_TESTING).sum() > 100
    first = drift_bench.train_first_champion(table, TINY, tmp_path, FAST_MODEL, LENIENT_GATE)
    assert first == 1
    weeks = [
        drift_bench.Week(table, index, start, tmp_path)
        for index, start in enumerate(TINY.week_starts)
    ]
    precision = [week.average_precision(first) for week in weeks]
    quiet, drifted = precision[: TINY.quiet_weeks], precision[TINY.quiet_weeks :]
    # Card testing is fraud the champion never saw: its share of the frauds goes unranked.
    assert np.mean(drifted) < 0.7 * np.mean(quiet), precision
    # Each week was scored as serve.py batch scores a file: the week and its history.
    scored = pd.read_parquet(weeks[0].scored_by(first))
    assert {"fraud_probability", "is_fraud", "TX_FRAUD"} <= set(scored.columns)
    assert len(scored) == len(pd.read_parquet(weeks[0].slice))


def test_the_figures_name_the_means_after_the_drift_and_the_quiet_weeks_alarms():
    drill = drift_bench.Drill(quiet_weeks=2, drift_weeks=2)
    no_retrain, retrain = drift_bench.Curve(), drift_bench.Curve()
    for version, ap_without, ap_with, alarm in (
        (1, 0.8, 0.8, False),
        (1, 0.7, 0.7, True),  # a false alarm: a quiet week
        (1, 0.4, 0.4, True),
        (2, 0.2, 0.6, True),
    ):
        no_retrain.scored(1, ap_without)
        retrain.scored(version, ap_with)
        for curve in (no_retrain, retrain):
            curve.watched(drift_bench.Watch(alarm, "crossed" if alarm else "quiet"))
    figures = drift_bench.figures(drill, no_retrain, retrain, [])
    assert figures["ap_no_retrain_mean"] == pytest.approx(0.3)
    assert figures["ap_retrain_mean"] == pytest.approx(0.5)
    assert figures["false_alarms"] == 1
    assert figures["first_alarm_week_after_drift"] == 0
    assert figures["retrain"]["versions"] == [1, 1, 1, 2]


def test_the_command_refuses_a_bad_drift_in_one_line(tmp_path, caplog):
    out = tmp_path / "drift.json"
    assert drift_bench.main(["--out", str(out), "--drift-kind", "meteor"]) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert errors == [
        "Invalid parameter: drift_kind must be one of terminals, scenario, amounts, got 'meteor'"
    ]
    assert not out.exists()


def test_the_monitor_stays_quiet_then_alarms_and_retrains_on_inflating_amounts(tmp_path):
    """The drill's monitor calls on simulated drift: the quiet weeks cross nothing, the weeks
    of amounts 20% higher a week cross the amount features' PSI, and with retraining data an
    alarm registers a new version through the gate."""
    drill = drift_bench.Drill(
        n_customers=500,
        n_terminals=1_000,
        quiet_weeks=2,
        drift_weeks=2,
        drift_kind="amounts",
        drift_strength=2.0,
    )
    table = simulate_transactions(drill.simulator())
    first = drift_bench.train_first_champion(table, drill, tmp_path, FAST_MODEL, LENIENT_GATE)
    watched = []
    for index, start in enumerate(drill.week_starts):
        week = drift_bench.Week(table, index, start, tmp_path)
        watched.append(drift_bench.watch(week.scored_by(first), first, start, None))
    assert [seen.alarm for seen in watched] == [False, False, True, True]
    assert all("no threshold crossed" in seen.message for seen in watched[:2])
    # The first crossing each names: an amount feature's PSI (the score's moves later).
    assert all(re.search(r"psi_\w*AMOUNT\w* = ", seen.message) for seen in watched[2:])
    last = drill.week_starts[-1]
    recent = drift_bench.write_recent(
        table, last + drift_bench.WEEK, drill.champion_days, tmp_path / "recent.parquet"
    )
    week = drift_bench.Week(table, 3, last, tmp_path)
    retrained = drift_bench.watch(week.scored_by(first), first, last, recent)
    assert retrained.alarm
    assert "retrained: pipeline on" in retrained.message
    versions = mlflow.MlflowClient().search_model_versions("name = 'fraud-detector'")
    assert sorted(int(version.version) for version in versions) == [1, 2]
