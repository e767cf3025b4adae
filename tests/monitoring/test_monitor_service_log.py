"""``monitor`` on what the live service logged (``serve.py api --score-log``).

Two days of the small simulation are replayed through ``POST /transactions`` by two workers
sharing one online state, each with its own score log, as a service with two workers sharing
Redis runs: the first follows version 1, the second version 2 and takes over in the middle of
the second day (the alias moved mid-week). The frauds of the replayed days are fed back through
``POST /feedback`` afterwards. ``monitor --scored DIR/scored --labels DIR/labels`` must then give
every window figure that ``monitor`` gives on the same transactions scored by ``serve.py batch``
(with the 37 days of history the batch features need): the logged features equal the batch
features to rtol 1e-9 (``tests/online/test_replay.py``), and the scores differ by about 1e-7
(the service walks the trees of a few rows in float64, XGBoost's predictor sums in float32), so
the figures are compared at rtol 1e-6.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from fraud_detection.config import ApiConfig, BatchConfig, MonitorConfig
from fraud_detection.contract import Step
from fraud_detection.errors import DataError, LineageError
from fraud_detection.online.features import OnlineRecipe
from fraud_detection.online.score_log import LABELS_FOLDER, SCORED_FOLDER, VERSION_COLUMN, ScoreLog
from fraud_detection.online.service import OnlineService, open_online_service
from fraud_detection.serving.api import create_app
from fraud_detection.serving.batch import score_batch
from fraud_detection.steps.monitor import monitor
from tests.support.online import COLUMNS, Replay, call, replay_through, served_version
from tests.support.pipeline import LENIENT_GATE, MODEL_NAME, latest_run

# Thresholds nothing crosses: a one-day window is all weekdays or all weekend (PSI far above
# 0.1), and the figures are what is compared here.
NO_ALARM = {
    "psi_threshold": 1e9,
    "score_psi_threshold": 1e9,
    "alert_rate_ratio": 1e9,
    "min_ap_ratio": 0.0,
}
HISTORY_DAYS = 37  # the longest window (30 days) plus the label delay (7): not monitored in batch
VERSION_1, VERSION_2 = f"models:/{MODEL_NAME}/1", f"models:/{MODEL_NAME}/2"


@dataclass(frozen=True)
class LoggedDays:
    replay: Replay
    log: Path  # the --score-log directory
    swap: pd.Timestamp  # from here on, version 2 scored

    @property
    def as_of(self) -> str:
        """Late enough for the labels of both days to have matured."""
        return str(self.replay.end + self.replay.delay)

    def batch_input(self) -> pd.DataFrame:
        """The same transactions with the history their batch features need, labels included."""
        times = self.replay.table[COLUMNS.timestamp_column]
        start = self.replay.cutoff - pd.Timedelta(days=HISTORY_DAYS)
        return self.replay.table[(times >= start) & (times < self.replay.end)]


@pytest.fixture(scope="module")
def logged(two_version_store, small_transactions, tmp_path_factory) -> Iterator[LoggedDays]:
    table = small_transactions.sort_values(
        [COLUMNS.timestamp_column, COLUMNS.id_column]
    ).reset_index(drop=True)
    cutoff = table[COLUMNS.timestamp_column].min().normalize() + pd.Timedelta(days=50)
    root = tmp_path_factory.mktemp("service-log")
    with served_version(two_version_store, 1) as one, served_version(two_version_store, 2) as two:
        recipe = OnlineRecipe.of_model(one.current.config)
        replay = Replay(table, cutoff, cutoff + pd.Timedelta(days=2), recipe)
        history = replay.write_history(root / "history.parquet")
        config = ApiConfig(history=str(history), score_log=str(root / "log"))
        first = open_online_service(config, one.current)
        # The second worker shares the first's state (as two workers share Redis), its own log.
        second = OnlineService(
            first.state, score_log=ScoreLog(config.score_log, COLUMNS, recipe.features)
        )
        apps = [
            create_app(follower, 1 << 22, online=online)
            for follower, online in ((one, first), (two, second))
        ]
        swap = cutoff + pd.Timedelta(hours=36)
        times = table.set_index(COLUMNS.id_column)[COLUMNS.timestamp_column]

        def send(position, request):
            late = times[request.ids[0]] >= swap if request.ids else position % 2
            return call(apps[int(late)], "POST", request.path, request.body)

        replay_through(replay.requests(), send)
        frauds = replay.replayed()
        frauds = [int(i) for i in frauds.loc[frauds[COLUMNS.label_column] == 1, COLUMNS.id_column]]
        for position, start in enumerate(range(0, len(frauds), 20)):  # the labels, a week later
            labels = [
                {COLUMNS.id_column: i, COLUMNS.label_column: 1} for i in frauds[start : start + 20]
            ]
            body = json.dumps({"labels": labels}).encode()
            assert call(apps[position % 2], "POST", "/feedback", body)[0] == 200
        first.close()
        second.close()
    yield LoggedDays(replay, root / "log", swap)


def config(days: LoggedDays, scored: str | Path, **changes) -> MonitorConfig:
    settings = {
        "labels": str(days.log / LABELS_FOLDER),
        "window_days": 1,
        "as_of": days.as_of,
        **NO_ALARM,
    }
    return MonitorConfig(scored=str(scored), gate=LENIENT_GATE, **(settings | changes))


def window_figures() -> dict[str, dict[str, float]]:
    """The latest monitor run's figures, by window."""
    parent = latest_run(Step.MONITOR)
    children = mlflow.MlflowClient().search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    return {child.data.params["window_start"]: child.data.metrics for child in children}


def batch_scored(days: LoggedDays, tmp_path: Path, model_uri: str) -> Path:
    source, output = tmp_path / "transactions.csv", tmp_path / "batch-scored.csv"
    days.batch_input().to_csv(source, index=False)
    score_batch(BatchConfig(model_uri=model_uri, input=str(source), output=str(output)))
    return output


def assert_same_figures(logged: dict, batch: dict) -> None:
    assert sorted(logged) == sorted(batch) and len(logged) == 2
    for window, figures in batch.items():
        assert sorted(logged[window]) == sorted(figures)
        assert "average_precision" in figures and "card_precision_at_100" in figures
        for name, value in figures.items():
            assert logged[window][name] == pytest.approx(value, rel=1e-6, abs=1e-9), (window, name)


def test_the_log_gives_the_batch_files_figures(registry, logged, tmp_path):
    """Monitored as version 1: its own rows checked, version 2's scored again."""
    scored = logged.log / SCORED_FOLDER
    assert len(list(scored.iterdir())) == len(list((logged.log / LABELS_FOLDER).iterdir())) == 2
    table = pd.concat(pd.read_csv(path) for path in scored.iterdir())
    assert sorted(table[COLUMNS.id_column]) == sorted(logged.replay.replayed()[COLUMNS.id_column])
    assert set(table[VERSION_COLUMN]) == {1, 2}
    monitor(config(logged, scored))
    from_log = window_figures()
    monitor(config(logged, batch_scored(logged, tmp_path, VERSION_1), labels=""))
    assert_same_figures(from_log, window_figures())


def test_each_version_is_checked_on_its_own_rows(registry, logged, tmp_path, caplog):
    scored = tmp_path / "scored"
    shutil.copytree(logged.log / SCORED_FOLDER, scored)
    paths = sorted(scored.iterdir(), key=lambda path: pd.read_csv(path)[VERSION_COLUMN].iloc[0])
    # A client retried after a restart of an in-memory service: logged twice, monitored once.
    retried = pd.read_csv(paths[1]).head(1)
    retried.to_csv(tmp_path / "retried.csv", index=False)
    (scored / "scored-2099-01-01-1.csv").write_text((tmp_path / "retried.csv").read_text())
    with caplog.at_level(logging.WARNING):
        monitor(config(logged, scored, model_uri=VERSION_2))  # its rows (after the swap) match
    assert "1 transaction(s) logged more than once" in caplog.text
    # A version-2 row changed: version 1 scores it again, version 2 refuses it.
    late = pd.read_csv(paths[1])
    late.loc[0, "fraud_probability"] += 0.01
    late.to_csv(paths[1], index=False)
    monitor(config(logged, scored))
    with pytest.raises(
        LineageError,
        match=r"was not written by models:/fraud-detector/2 \(largest difference 0\.0100",
    ):
        monitor(config(logged, scored, model_uri=VERSION_2))
    # Only version 2's rows: nothing to check version 1 against.
    paths[0].unlink()
    with pytest.raises(
        LineageError,
        match=r"no row was scored by models:/fraud-detector/1 \(model_version holds 2\)",
    ):
        monitor(config(logged, scored))
    assert latest_run(Step.MONITOR).info.status == "FAILED"


def test_a_log_directory_without_rows_is_refused(registry, logged, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: no \.csv"):
        monitor(config(logged, empty))
    header = (logged.log / SCORED_FOLDER).iterdir().__next__().read_text().splitlines()[0]
    (empty / "scored-2018-05-21-1.csv").write_text(header + "\n")
    with pytest.raises(DataError, match="empty: no rows"):
        monitor(config(logged, empty))
    # A part file of a model with other features: its rows lack this model's.
    other = tmp_path / "other"
    shutil.copytree(logged.log / SCORED_FOLDER, other)
    first = next(other.iterdir())
    pd.read_csv(first).drop(columns="TERMINAL_ID_RISK_1DAY_WINDOW").to_csv(first, index=False)
    with pytest.raises(
        DataError, match=r"column TERMINAL_ID_RISK_1DAY_WINDOW has .* missing value"
    ):
        monitor(config(logged, other))
    assert latest_run(Step.MONITOR).info.status == "FAILED"
