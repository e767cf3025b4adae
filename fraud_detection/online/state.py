"""Each card's and terminal's recent entries: the interface, and the in-memory backend.

The rules every backend keeps (``docs/serving.md``, "Raw transactions and online features"):

- **Time order per entity.** A card or terminal takes its transactions in time order, ties at
  one instant by id (the order of ``add_features``). A transaction earlier than the latest one
  recorded for its card or its terminal is refused (409) and changes nothing: its features
  would need a past that later transactions have already used.
- **Retries.** An id recorded before is not counted again; it gets the features recorded the
  first time. The same id with another time, card, terminal or amount is refused (409).
- **All or nothing.** A request is checked whole (against the state and against its own earlier
  transactions) before its first transaction is recorded; feedback likewise.
- **Unknown entities start empty**; feedback for an id the state does not hold (never scored, or
  older than the longest window plus the delay) is refused (404).
- **Pruning.** Recording a transaction drops its card's entries older than the longest window
  and its terminal's older than the longest window plus the delay (with their ids and labels):
  no later transaction of that entity can reach them. An entity that goes quiet keeps its last
  entries until its next transaction.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from fraud_detection.online.errors import OrderConflictError, UnknownTransactionError
from fraud_detection.online.features import CardEntry, OnlineRecipe, TerminalEntry
from fraud_detection.online.requests import Label, RawTransaction

Features = tuple[float, ...]  # in the model's input order


@dataclass(frozen=True)
class Observation:
    """What the state held for one transaction when it was recorded."""

    transaction: RawTransaction
    duplicate: bool
    features: Features | None = None  # a duplicate's, recorded the first time (None: not yet)
    card: Sequence[CardEntry] = ()  # the card's earlier entries (a new transaction only)
    terminal: Sequence[TerminalEntry] = ()  # the terminal's earlier entries and their labels


@dataclass(frozen=True)
class HistoryRow:
    """A transaction of the warm-start history, with its label (None: unknown) and features."""

    transaction: RawTransaction
    label: int | None
    features: Features


class OnlineState(ABC):
    """Where the entries live. ``record`` and ``feedback`` are all or nothing."""

    remote = False  # True: calls wait on the network (the service runs them off the event loop)

    def __init__(self, recipe: OnlineRecipe) -> None:
        self.recipe = recipe

    @abstractmethod
    def record(self, transactions: Sequence[RawTransaction]) -> list[Observation]:
        """Record the new transactions, in order; what each saw before it.

        Raises:
            OrderConflictError: one breaks the order rule or reuses an id with other values;
                nothing was recorded.
        """

    def record_many(
        self, requests: Sequence[Sequence[RawTransaction]]
    ) -> list[list[Observation] | OrderConflictError]:
        """Record several requests in this order, each all or nothing; per request, what it saw
        or why it was refused (a backend over the network does it in one round trip)."""
        results: list[list[Observation] | OrderConflictError] = []
        for transactions in requests:
            try:
                results.append(self.record(transactions))
            except OrderConflictError as error:
                results.append(error)
        return results

    @abstractmethod
    def remember(self, features: Mapping[str, Features]) -> None:
        """Keep the features computed for new transactions (by ``order_key``), for retries."""

    @abstractmethod
    def recorded_features(self, key: str) -> Features | None:
        """The features kept for a transaction, if any."""

    @abstractmethod
    def feedback(self, labels: Sequence[Label]) -> None:
        """Set the labels of recorded transactions.

        Raises:
            UnknownTransactionError: one id is not held; nothing was changed.
        """

    @abstractmethod
    def load(self, rows: Iterable[HistoryRow]) -> int:
        """Add the warm-start history (time ordered, every entry within reach); the count."""

    @abstractmethod
    def is_empty(self) -> bool:
        """Whether nothing was ever recorded (a fresh store: warm-start it)."""

    def close(self) -> None:  # noqa: B027 (optional hook: memory has nothing to release)
        """Release connections (nothing to do in memory)."""


def conflict(position: int, problem: str) -> OrderConflictError:
    """The 409 of a transaction at ``position`` of its request."""
    messages = {
        "changed": "this id was recorded with another time, card, terminal or amount",
        "card": "earlier than the latest transaction recorded for its card",
        "terminal": "earlier than the latest transaction recorded for its terminal",
    }
    rule = (
        "; each card and terminal takes its transactions in time order (same instant: by id)"
        if problem != "changed"
        else "; a retry must repeat the transaction unchanged"
    )
    return OrderConflictError(f"transactions[{position}]: {messages[problem]}{rule}")


def unknown(position: int) -> UnknownTransactionError:
    return UnknownTransactionError(
        f"labels[{position}]: no such transaction in the state (never scored here, or older "
        "than the longest window plus the label delay)"
    )


@dataclass
class _Record:
    seconds: int
    card: str
    terminal: str
    amount: float
    label: int | None = None
    features: Features | None = None


class MemoryState(OnlineState):
    """The state of one worker process: deques per card and terminal, records per id."""

    def __init__(self, recipe: OnlineRecipe) -> None:
        super().__init__(recipe)
        self._cards: dict[str, deque[tuple[int, str, float]]] = {}
        self._terminals: dict[str, deque[tuple[int, str]]] = {}
        self._records: dict[str, _Record] = {}
        # Routes run on one event loop; the lock keeps a warm start or a test thread honest.
        self._lock = threading.Lock()

    def record(self, transactions: Sequence[RawTransaction]) -> list[Observation]:
        with self._lock:
            self._check(transactions)
            return [self._observe(transaction) for transaction in transactions]

    def _check(self, transactions: Sequence[RawTransaction]) -> None:
        latest: dict[tuple[str, str], tuple[int, str]] = {}
        for position, transaction in enumerate(transactions):
            record = self._records.get(transaction.key)
            if record is not None:
                if (record.seconds, record.card, record.terminal, record.amount) != (
                    transaction.seconds,
                    transaction.card,
                    transaction.terminal,
                    transaction.amount,
                ):
                    raise conflict(position, "changed")
                continue
            order = (transaction.seconds, transaction.key)
            for kind, entity, entries in (
                ("card", transaction.card, self._cards),
                ("terminal", transaction.terminal, self._terminals),
            ):
                last = latest.get((kind, entity))
                if last is None and (queue := entries.get(entity)):
                    last = queue[-1][:2]
                if last is not None and last >= order:
                    raise conflict(position, kind)
                latest[(kind, entity)] = order

    def _observe(self, transaction: RawTransaction) -> Observation:
        record = self._records.get(transaction.key)
        if record is not None:
            return Observation(transaction, duplicate=True, features=record.features)
        t = transaction.seconds
        card = self._cards.setdefault(transaction.card, deque())
        while card and card[0][0] <= t - self.recipe.card_lookback:
            card.popleft()
        terminal = self._terminals.setdefault(transaction.terminal, deque())
        while terminal and terminal[0][0] <= t - self.recipe.terminal_lookback:
            del self._records[terminal.popleft()[1]]
        observation = Observation(
            transaction,
            duplicate=False,
            card=[(seconds, amount) for seconds, _, amount in card],
            terminal=[(seconds, self._records[key].label or 0) for seconds, key in terminal],
        )
        self._append(transaction, label=None, features=None)
        return observation

    def _append(
        self, transaction: RawTransaction, label: int | None, features: Features | None
    ) -> None:
        key = transaction.key
        self._cards.setdefault(transaction.card, deque()).append(
            (transaction.seconds, key, transaction.amount)
        )
        self._terminals.setdefault(transaction.terminal, deque()).append((transaction.seconds, key))
        self._records[key] = _Record(
            transaction.seconds,
            transaction.card,
            transaction.terminal,
            transaction.amount,
            label,
            features,
        )

    def remember(self, features: Mapping[str, Features]) -> None:
        with self._lock:
            for key, values in features.items():
                if (record := self._records.get(key)) is not None:
                    record.features = values

    def recorded_features(self, key: str) -> Features | None:
        record = self._records.get(key)
        return None if record is None else record.features

    def feedback(self, labels: Sequence[Label]) -> None:
        with self._lock:
            for position, label in enumerate(labels):
                if label.key not in self._records:
                    raise unknown(position)
            for label in labels:
                self._records[label.key].label = label.label

    def load(self, rows: Iterable[HistoryRow]) -> int:
        count = 0
        with self._lock:
            for row in rows:
                self._append(row.transaction, row.label, row.features)
                count += 1
        return count

    def is_empty(self) -> bool:
        return not self._records

    def entries(self) -> int:
        """How many entries the cards and terminals hold (pruning keeps it bounded)."""
        return sum(map(len, self._cards.values())) + sum(map(len, self._terminals.values()))
