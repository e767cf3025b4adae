"""Replays of simulated days through the raw-transaction routes, and the batch answer to match.

``Replay`` cuts a simulated table at a day: the history file holds the transactions before it,
with the labels known then (those older than the label delay); the replayed days follow as
requests in time order, each fraud label fed back at the instant it matures (transaction time +
delay), before the transactions of that instant. The batch reference is ``add_features`` over
the whole table (every label) and the model on its rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

from fraud_detection.config import TransactionColumns
from fraud_detection.data.features import add_features
from fraud_detection.online.features import OnlineRecipe
from fraud_detection.serving.follower import ModelFollower
from tests.support.asgi import call as asgi_call
from tests.support.pipeline import MODEL_NAME, TwoVersionStore

COLUMNS = TransactionColumns()
DAY = 86_400  # seconds
REQUEST_ROWS = 40  # transactions per request (a new request also starts at each label)


@contextmanager
def served_version(store: TwoVersionStore, version: int) -> Iterator[ModelFollower]:
    """A version of the two-version store, loaded as the service loads it; closed on exit."""
    uri = f"sqlite:///{store.database}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        follower = ModelFollower(f"models:/{MODEL_NAME}/{version}", poll_seconds=0)
        try:
            follower.load()
        finally:
            mlflow.set_tracking_uri(None)
    try:
        yield follower
    finally:
        follower.close()


def call(app: Any, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One JSON request through the ASGI interface: (status, body)."""
    status, _, content = asgi_call(app, method, path, body, [("content-type", "application/json")])
    return status, content


def transaction_json(row: Any) -> dict[str, Any]:
    """A table row (namedtuple of ``itertuples``) as the route takes it."""
    return {
        COLUMNS.id_column: int(getattr(row, COLUMNS.id_column)),
        COLUMNS.timestamp_column: str(getattr(row, COLUMNS.timestamp_column)),
        COLUMNS.customer_column: int(getattr(row, COLUMNS.customer_column)),
        COLUMNS.terminal_column: int(getattr(row, COLUMNS.terminal_column)),
        COLUMNS.amount_column: float(getattr(row, COLUMNS.amount_column)),
    }


@dataclass(frozen=True)
class Request:
    path: str
    body: bytes
    ids: tuple[int, ...] = ()  # the transactions it scores, in order


@dataclass(frozen=True)
class Replay:
    table: pd.DataFrame  # the whole simulated table, time ordered
    cutoff: pd.Timestamp  # history: before it; replayed: from it to ``end``
    end: pd.Timestamp
    recipe: OnlineRecipe

    @property
    def delay(self) -> pd.Timedelta:
        return pd.Timedelta(seconds=self.recipe.delay_seconds)

    def write_history(self, path: Path, before: pd.Timestamp | None = None) -> Path:
        """The history file: transactions before ``before`` (the cutoff), labels known then."""
        before = self.cutoff if before is None else before
        times = self.table[COLUMNS.timestamp_column]
        history = self.table[times < before].copy()
        unknown = history[COLUMNS.timestamp_column] > before - self.delay
        labels = history[COLUMNS.label_column].astype("Float64")
        labels[unknown] = pd.NA
        history[COLUMNS.label_column] = labels
        history.to_parquet(path)
        return path

    def replayed(self, start: pd.Timestamp | None = None) -> pd.DataFrame:
        times = self.table[COLUMNS.timestamp_column]
        return self.table[(times >= (start or self.cutoff)) & (times < self.end)]

    def requests(self, start: pd.Timestamp | None = None) -> Iterator[Request]:
        """Feedback and transactions in time order, from ``start`` (the cutoff) to the end."""
        start = self.cutoff if start is None else start
        times = self.table[COLUMNS.timestamp_column]
        frauds = self.table[
            (self.table[COLUMNS.label_column] == 1)
            & (times + self.delay >= start)
            & (times + self.delay < self.end)
        ]
        events = [
            (t + self.delay, 0, int(i))
            for t, i in zip(
                frauds[COLUMNS.timestamp_column], frauds[COLUMNS.id_column], strict=True
            )
        ]
        replayed = self.replayed(start)
        events += [(row.TX_DATETIME, 1, row) for row in replayed.itertuples(index=False)]
        events.sort(key=lambda event: (event[0], event[1], _id_of(event[2])))
        yield from _grouped(events)

    @cached_property
    def expected(self) -> pd.DataFrame:
        """The batch path's features of the replayed rows (indexed by id)."""
        featured = add_features(
            self.table,
            COLUMNS,
            delay_days=self.delay,
            windows=self.recipe.windows,
        )
        rows = featured[COLUMNS.id_column].isin(self.replayed()[COLUMNS.id_column])
        return featured[rows].set_index(COLUMNS.id_column)[list(self.recipe.features)]


def _id_of(item: Any) -> int:
    return item if isinstance(item, int) else int(getattr(item, COLUMNS.id_column))


def _grouped(events: list[tuple[pd.Timestamp, int, Any]]) -> Iterator[Request]:
    batch: list[Any] = []
    labels: list[int] = []

    def flush_transactions() -> Iterator[Request]:
        if batch:
            body = json.dumps(
                {"transactions": [transaction_json(r) for r in batch], "features": True}
            )
            yield Request("/transactions", body.encode(), tuple(_id_of(r) for r in batch))
            batch.clear()

    def flush_labels() -> Iterator[Request]:
        if labels:
            body = {"labels": [{COLUMNS.id_column: i, COLUMNS.label_column: 1} for i in labels]}
            yield Request("/feedback", json.dumps(body).encode())
            labels.clear()

    for _, kind, item in events:
        if kind == 0:
            yield from flush_transactions()
            labels.append(item)
        else:
            yield from flush_labels()
            batch.append(item)
            if len(batch) >= REQUEST_ROWS:
                yield from flush_transactions()
    yield from flush_labels()
    yield from flush_transactions()


def replay_through(
    requests: Iterator[Request],
    send: Callable[[int, Request], tuple[int, bytes]],
    replay_name: str = "",
) -> dict[int, dict[str, Any]]:
    """Send every request (``send(position, request)``); every answer by transaction id, with
    the request it came in (``request``: the replay's name and the request's position)."""
    answers: dict[int, dict[str, Any]] = {}
    for position, request in enumerate(requests):
        status, content = send(position, request)
        assert status == 200, (request.path, status, content[:300])
        if request.path == "/transactions":
            for prediction in json.loads(content)["predictions"]:
                answers[prediction["id"]] = {**prediction, "request": f"{replay_name}{position}"}
    return answers


def assert_matches_batch(
    answers: dict[int, dict[str, Any]], replay: Replay, predict: Callable[[np.ndarray], Any]
) -> int:
    """Every replayed transaction's features and score equal the batch path's (rtol 1e-9).

    The model scores the batch features in the same groups of rows as the requests did: the
    served model answers a few rows by walking the trees in float64 and more through XGBoost's
    own predictor (float32 sums), which differ by about 1e-6 relative on the same row.
    """
    expected = replay.expected
    assert sorted(answers) == sorted(expected.index.tolist())
    online = pd.DataFrame([answers[i]["features"] for i in expected.index], index=expected.index)
    online = online[list(expected.columns)]
    np.testing.assert_allclose(online.to_numpy(), expected.to_numpy(), rtol=1e-9, atol=1e-12)
    groups = pd.Series([answers[i]["request"] for i in expected.index], index=expected.index)
    for _, ids in groups.groupby(groups.to_numpy()).groups.items():
        scores = np.array([answers[i]["fraud_probability"] for i in ids])
        # C order, as a request's matrix is: XGBoost's sums differ (~1e-8) on a Fortran array.
        values = np.ascontiguousarray(expected.loc[ids].to_numpy(np.float64))
        batch = np.asarray(predict(values)["fraud_probability"])
        np.testing.assert_allclose(scores, batch, rtol=1e-9, atol=1e-12)
    return len(expected)
