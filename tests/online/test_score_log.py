"""The score log of ``serve.py api --score-log``: files, rotation, write-behind, the routes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fraud_detection.config import ApiConfig
from fraud_detection.data.reading import read_table
from fraud_detection.errors import DataError, PipelineError
from fraud_detection.online.requests import Label, RawTransaction
from fraud_detection.online.score_log import (
    LABELS_FOLDER,
    SCORED_FOLDER,
    VERSION_COLUMN,
    ScoreLog,
)
from fraud_detection.online.service import open_online_service
from fraud_detection.serving.api import create_app
from tests.support.online import COLUMNS, DAY, call

FEATURES = ("TX_AMOUNT", "CUSTOMER_ID_NB_TX_1DAY_WINDOW", "TERMINAL_ID_RISK_7DAY_WINDOW")
MIDNIGHT = 1_795_737_600.0  # 2026-11-27 00:00:00 UTC


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def transaction(i: int, amount: float = 10.5) -> RawTransaction:
    return RawTransaction(id=i, seconds=1_525_356_131 + i, card="42", terminal="t,7", amount=amount)


def files(directory: Path, folder: str = SCORED_FOLDER) -> list[str]:
    return sorted(path.name for path in (directory / folder).iterdir())


def test_rows_round_trip_and_rotate_daily(tmp_path):
    clock = Clock(MIDNIGHT - 1)
    log = ScoreLog(tmp_path, COLUMNS, FEATURES, flush_seconds=3600, clock=clock)
    awkward = 0.1 + 0.2  # 17 significant digits, kept exactly
    log.scored(
        [transaction(1), transaction(2)], [(10.5, 1.0, awkward)] * 2, [0.25, 0.75], [0, 1], "3"
    )
    clock.now = MIDNIGHT + 1
    log.scored([transaction(3)], [(10.5, 2.0, 1 / 3)], np.array([0.5]), np.array([1]), "4")
    log.labelled([Label(1, 1), Label("x", 0)])
    log.close()
    pid = os.getpid()
    assert files(tmp_path) == [f"scored-2026-11-26-{pid}.csv", f"scored-2026-11-27-{pid}.csv"]
    table = read_table(str(tmp_path / SCORED_FOLDER), parts=True)
    assert list(table.columns) == [
        "TRANSACTION_ID",
        "TX_DATETIME",
        "CUSTOMER_ID",
        "TERMINAL_ID",
        "TX_AMOUNT",
        "fraud_probability",
        "is_fraud",
        "CUSTOMER_ID_NB_TX_1DAY_WINDOW",
        "TERMINAL_ID_RISK_7DAY_WINDOW",
        VERSION_COLUMN,
    ]
    assert table["TRANSACTION_ID"].tolist() == [1, 2, 3]
    assert table["TX_DATETIME"].tolist()[0] == "2018-05-03 14:02:12"
    assert table["TERMINAL_ID"].tolist() == ["t,7"] * 3
    assert table["TERMINAL_ID_RISK_7DAY_WINDOW"].tolist() == [awkward, awkward, 1 / 3]
    assert table[VERSION_COLUMN].tolist() == [3, 3, 4]
    labels = read_table(str(tmp_path / LABELS_FOLDER), parts=True)
    assert labels[["TRANSACTION_ID", "TX_FRAUD"]].astype(str).values.tolist() == [
        ["1", "1"],
        ["x", "0"],
    ]
    assert labels["received_at"].tolist() == ["2026-11-27 00:00:01.000"] * 2


def test_writes_behind_and_a_clean_stop_writes_the_rest(tmp_path):
    log = ScoreLog(tmp_path, COLUMNS, FEATURES, flush_seconds=0.05)
    log.scored([transaction(1)], [(10.5, 1.0, 0.0)], [0.1], [0], "1")
    deadline = time.monotonic() + 5
    while not files(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(read_table(str(tmp_path / SCORED_FOLDER), parts=True)) == 1  # before any stop
    log.close()

    slow = ScoreLog(tmp_path / "slow", COLUMNS, FEATURES, flush_seconds=3600)
    slow.scored([transaction(2)], [(10.5, 1.0, 0.0)], [0.1], [0], "1")
    time.sleep(0.1)
    assert files(tmp_path / "slow") == []  # queued in memory
    slow.close()
    assert len(read_table(str(tmp_path / "slow" / SCORED_FOLDER), parts=True)) == 1


def test_each_writer_has_files_of_its_own(tmp_path):
    """Two writers of one process (or a pid reused by a later process) never share a file."""
    first = ScoreLog(tmp_path, COLUMNS, FEATURES, flush_seconds=3600)
    second = ScoreLog(tmp_path, COLUMNS, FEATURES[:2], flush_seconds=3600)
    first.scored([transaction(1)], [(10.5, 1.0, 0.0)], [0.1], [0], "1")
    second.scored([transaction(2)], [(10.5, 1.0)], [0.2], [0], "1")
    first.close()
    second.close()
    names = files(tmp_path)
    assert len(names) == 2 and any(name.endswith(f"{os.getpid()}-1.csv") for name in names)
    headers = {(tmp_path / SCORED_FOLDER / n).read_text().splitlines()[0] for n in names}
    assert len(headers) == 2  # each file keeps its own header


def test_a_file_being_written_is_read_up_to_its_last_complete_line(tmp_path, caplog):
    log = ScoreLog(tmp_path, COLUMNS, FEATURES, flush_seconds=3600)
    log.scored([transaction(1), transaction(2)], [(10.5, 1.0, 0.0)] * 2, [0.1, 0.2], [0, 0], "1")
    log.close()
    (path,) = (tmp_path / SCORED_FOLDER).iterdir()
    with path.open("a") as handle:
        handle.write("3,2018-05-03 14:02:14,42,7,10")  # a write in progress
    (tmp_path / SCORED_FOLDER / "scored-2026-11-27-1.csv").touch()  # created, nothing yet
    (tmp_path / SCORED_FOLDER / "_SUCCESS").touch()
    with caplog.at_level(logging.WARNING):
        table = read_table(str(tmp_path / SCORED_FOLDER), parts=True)
    assert table["TRANSACTION_ID"].tolist() == [1, 2]
    assert "last line is incomplete" in caplog.text


def test_directories_that_hold_nothing_readable(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no \.csv, .* file in the directory"):
        read_table(str(tmp_path / "empty"), parts=True)
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "scored-a.csv").touch()
    with pytest.raises(DataError, match="blank: every file in the directory is empty"):
        read_table(str(tmp_path / "blank"), parts=True)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "part.parquet").write_bytes(b"not parquet\n")
    with pytest.raises(DataError, match=r"bad/part\.parquet: not a readable Parquet file"):
        read_table(str(tmp_path / "bad"), parts=True)
    with pytest.raises(DataError, match="is a directory; pass a CSV or Parquet file"):
        read_table(str(tmp_path / "bad"))  # only where a caller asks for parts


def test_a_failed_write_is_counted_and_never_raised(tmp_path, caplog):
    log = ScoreLog(tmp_path, COLUMNS, FEATURES, flush_seconds=3600)
    shutil.rmtree(tmp_path / SCORED_FOLDER)  # the disk went away
    log.scored([transaction(1)], [(10.5, 1.0, 0.0)], [0.1], [0], "1")
    with caplog.at_level(logging.ERROR):
        log.close()
    assert log.counts == {"written": 0, "lost": 1}
    assert "1 row(s) lost" in caplog.text
    assert 'fraud_online_score_log_rows_total{outcome="lost"} 1' in log.render_metrics()


def test_an_unusable_directory_stops_the_service_at_start(tmp_path, follower):
    (tmp_path / "file").write_text("")
    with pytest.raises(PipelineError, match=r"--score-log .*file: cannot create it"):
        open_online_service(ApiConfig(score_log=str(tmp_path / "file")), follower.current)


def test_the_routes_log_what_they_scored_once(tmp_path, follower):
    """A retry is logged once, feedback goes to the labels log, /invocations is not logged."""
    online = open_online_service(ApiConfig(score_log=str(tmp_path)), follower.current)
    app = create_app(follower, 1 << 20, online=online)
    rows = [
        {
            COLUMNS.id_column: i,
            COLUMNS.timestamp_column: f"2018-05-0{i} 10:00:00",
            COLUMNS.customer_column: 1,
            COLUMNS.terminal_column: 2,
            COLUMNS.amount_column: 20.0 * i,
        }
        for i in (1, 2)
    ]
    body = json.dumps({"transactions": rows, "features": True}).encode()
    status, first = call(app, "POST", "/transactions", body)
    assert status == 200
    assert call(app, "POST", "/transactions", body)[0] == 200  # a client retry
    status, _ = call(
        app, "POST", "/feedback", b'{"labels": [{"TRANSACTION_ID": 2, "TX_FRAUD": 1}]}'
    )
    assert status == 200
    features = list(follower.current.schema.names)
    invocation = json.dumps(
        {"dataframe_split": {"columns": features, "data": [[1.0] * len(features)]}}
    )
    assert call(app, "POST", "/invocations", invocation.encode())[0] == 200
    online.close()
    logged = read_table(str(tmp_path / SCORED_FOLDER), parts=True)
    answers = json.loads(first)["predictions"]
    assert logged["TRANSACTION_ID"].tolist() == [1, 2]
    assert logged["fraud_probability"].tolist() == [a["fraud_probability"] for a in answers]
    assert logged["is_fraud"].tolist() == [a["is_fraud"] for a in answers]
    assert logged[VERSION_COLUMN].astype(str).tolist() == ["1", "1"]
    for name in features:
        assert logged[name].tolist() == [a["features"][name] for a in answers]
    assert pd.to_datetime(logged["TX_DATETIME"]).diff().iloc[1] == pd.Timedelta(seconds=DAY)
    labels = read_table(str(tmp_path / LABELS_FOLDER), parts=True)
    assert labels[["TRANSACTION_ID", "TX_FRAUD"]].values.tolist() == [[2, 1]]
    _, metrics = call(app, "GET", "/metrics")
    assert 'fraud_online_score_log_rows_total{outcome="written"} 3' in metrics.decode()
