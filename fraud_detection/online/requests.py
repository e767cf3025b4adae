"""The JSON of the raw-transaction and feedback routes, checked whole before anything is recorded.

``POST /transactions``::

    {"transactions": [{"TRANSACTION_ID": 17, "TX_DATETIME": "2018-05-03 14:02:11",
                       "CUSTOMER_ID": 42, "TERMINAL_ID": 977, "TX_AMOUNT": 57.16}],
     "features": false, "params": {"reasons": 3}}

``POST /feedback``::

    {"labels": [{"TRANSACTION_ID": 17, "TX_FRAUD": 1}]}

Column names are those of ``TransactionColumns`` (the transaction table's). An id is an integer
or a string; a time is a date and time without a UTC offset, read as the history file's times
are, or a number of seconds since the epoch; an amount is a finite number. Other keys of a
transaction are ignored. A refusal names the position and the field (``transactions[3].TX_AMOUNT``)
and the problem, never the value sent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fraud_detection.config import TransactionColumns
from fraud_detection.online.errors import InvalidRequestError

EPOCH = datetime(1970, 1, 1)
SECOND = timedelta(seconds=1)
# Integer ids are shifted into 20 digits so that their text sorts as the numbers do.
_INT_OFFSET = 2**63
_MAX_TEXT = 256


def order_key(transaction_id: int | str) -> str:
    """The id as text that sorts as the batch path orders ids (numbers as numbers, text as text).

    Rows of one card or terminal at the same instant are ordered by id (``add_features``); the
    state compares these keys (bytewise) to apply the same rule. Integer ids come before text ids.
    """
    if isinstance(transaction_id, int):
        return f"i{transaction_id + _INT_OFFSET:020d}"
    return f"s{transaction_id}"


@dataclass(frozen=True)
class RawTransaction:
    """One checked raw transaction: time in whole seconds since the epoch, entities as text."""

    id: int | str
    seconds: int
    card: str
    terminal: str
    amount: float

    @property
    def key(self) -> str:
        return order_key(self.id)


@dataclass(frozen=True)
class TransactionsRequest:
    transactions: tuple[RawTransaction, ...]
    with_features: bool
    params: Mapping[str, Any]  # MLflow's predict params, as on /invocations ({"reasons": k})


@dataclass(frozen=True)
class Label:
    id: int | str
    label: int

    @property
    def key(self) -> str:
        return order_key(self.id)


def parse_transactions(body: bytes, columns: TransactionColumns) -> TransactionsRequest:
    """Check a ``POST /transactions`` body whole.

    Raises:
        InvalidRequestError: the first problem found, with its position and field.
    """
    document = _json_object(body)
    items = _list_of_objects(document, "transactions")
    parsed = tuple(
        _transaction(item, f"transactions[{i}]", columns) for i, item in enumerate(items)
    )
    _unique_ids(parsed, "transactions", columns.id_column)
    with_features = document.get("features", False)
    if not isinstance(with_features, bool):
        raise InvalidRequestError("features: must be true or false")
    return TransactionsRequest(parsed, with_features, _params(document.get("params")))


def parse_feedback(body: bytes, columns: TransactionColumns) -> tuple[Label, ...]:
    """Check a ``POST /feedback`` body whole.

    Raises:
        InvalidRequestError: the first problem found, with its position and field.
    """
    items = _list_of_objects(_json_object(body), "labels")
    labels = []
    for i, item in enumerate(items):
        where = f"labels[{i}]"
        value = item.get(columns.label_column)
        if isinstance(value, bool) or value not in (0, 1):
            raise InvalidRequestError(f"{where}.{columns.label_column}: must be 0 or 1")
        labels.append(Label(_id(item, where, columns.id_column), int(value)))
    _unique_ids(labels, "labels", columns.id_column)
    return tuple(labels)


def _json_object(body: bytes) -> Mapping[str, Any]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidRequestError("the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise InvalidRequestError("the body must be a JSON object")
    return document


def _list_of_objects(document: Mapping[str, Any], name: str) -> Sequence[Mapping[str, Any]]:
    items = document.get(name)
    if not isinstance(items, list) or not items:
        raise InvalidRequestError(f"{name}: must be a non-empty list of objects")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequestError(f"{name}[{i}]: must be an object")
    return items


def _transaction(
    item: Mapping[str, Any], where: str, columns: TransactionColumns
) -> RawTransaction:
    amount = item.get(columns.amount_column)
    if not _is_number(amount) or not math.isfinite(amount):
        raise InvalidRequestError(f"{where}.{columns.amount_column}: must be a finite number")
    return RawTransaction(
        id=_id(item, where, columns.id_column),
        seconds=_seconds(item.get(columns.timestamp_column), f"{where}.{columns.timestamp_column}"),
        card=_entity(item, where, columns.customer_column),
        terminal=_entity(item, where, columns.terminal_column),
        amount=float(amount),
    )


def _id(item: Mapping[str, Any], where: str, name: str) -> int | str:
    value = item.get(name)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < _INT_OFFSET:
        return value
    if isinstance(value, str) and 0 < len(value) <= _MAX_TEXT and value.isprintable():
        return value
    raise InvalidRequestError(
        f"{where}.{name}: must be an integer (64-bit) or a string of 1 to {_MAX_TEXT} "
        "printable characters"
    )


def _entity(item: Mapping[str, Any], where: str, name: str) -> str:
    # Card and terminal ids are keys only: 42 and "42" are the same card.
    return str(_id(item, where, name))


def _seconds(value: Any, where: str) -> int:
    """Whole seconds since the epoch, rounded down as the batch features read times."""
    if _is_number(value):
        if not math.isfinite(value) or abs(value) > 1e11:
            raise InvalidRequestError(
                f"{where}: must be a date and time, or seconds since the epoch"
            )
        return math.floor(value)
    if isinstance(value, str) and len(value) <= 64:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is None:
            return (moment - EPOCH) // SECOND
        if moment is not None:
            raise InvalidRequestError(
                f"{where}: give the time without a UTC offset, as the history file's times are"
            )
    raise InvalidRequestError(
        f"{where}: must be a date and time (ISO 8601, like 2018-05-03 14:02:11) or seconds "
        "since the epoch"
    )


def _params(params: Any) -> Mapping[str, Any]:
    """The request's predict params; their values are checked against the model being served
    (``follower.requested_reasons``), as on /invocations."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidRequestError("params: must be an object")
    return params


def _unique_ids(items: Sequence[RawTransaction | Label], name: str, id_column: str) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.key in seen:
            raise InvalidRequestError(
                f"{name}[{i}].{id_column}: the same id as {name}[{seen[item.key]}]; send each "
                "transaction once per request"
            )
        seen[item.key] = i


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
