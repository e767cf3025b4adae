"""The model's features of one raw transaction, from its card's and terminal's earlier entries.

The one implementation of the online feature arithmetic: both state backends hand it the same
entries. It follows ``data.features.add_features`` rule for rule:

- customer windows of length w hold the card's transactions in (t - w, t], the transaction
  itself included; the state holds only transactions that come before it in time order (ties
  at one instant ordered by id), so every entry it hands over at time t counts;
- terminal windows hold the terminal's transactions in (t - delay - w, t - delay], never the
  transaction itself; their fraud rate counts the labels known now, unknown ones as genuine.
  A label fed back early still counts only for transactions at least ``delay`` later: the
  window's end says so by itself;
- weekend and night come from the time (hour <= 6), read to the second.

Sums are taken in entry order; the batch path takes differences of cumulative sums, so the two
agree to float rounding (about 1e-12 relative), counts exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pandas as pd

from fraud_detection.config import FeatureWindows, parse_duration
from fraud_detection.data.features import NIGHT_LAST_HOUR, feature_columns
from fraud_detection.modelling.pyfunc import feature_recipe
from fraud_detection.online.errors import NotServableError
from fraud_detection.online.requests import RawTransaction

DAY_SECONDS = 86_400
# 1970-01-01, day 0 of epoch seconds, was a Thursday (Monday = 0).
_EPOCH_WEEKDAY = 3

CardEntry = tuple[int, float]  # (seconds, amount) of an earlier transaction of the card
TerminalEntry = tuple[int, int]  # (seconds, label known now: 1 fraud, else 0) of the terminal's


@dataclass(frozen=True)
class OnlineRecipe:
    """What the features of a model need: its windows, its label delay, its input order."""

    windows: FeatureWindows
    delay_seconds: int
    features: tuple[str, ...]

    @classmethod
    def of_model(cls, config: Mapping[str, Any], version: str | None = None) -> OnlineRecipe:
        """The recipe ``modelling.pyfunc.model_config`` stored in a model.

        Raises:
            NotServableError: the model takes passthrough features (no engineered recipe), or
                features this package does not compute.
        """
        name = f"model version {version}" if version else "the model"
        if not config.get("engineered_features", False):
            raise NotServableError(
                f"{name} was trained on passthrough features, which cannot be computed from "
                "raw transactions; send feature rows to /invocations"
            )
        delay, windows = feature_recipe(config)
        features = tuple(config.get("features") or feature_columns(windows))
        delay_seconds = int(parse_duration("delay_days", delay) // pd.Timedelta(seconds=1))
        recipe = cls(windows, delay_seconds, features)
        # What this module computes, asked of it: a feature added to the batch features (a
        # fork's edit of data/features.py) but not here is refused by name, not a KeyError.
        probe = RawTransaction(id=0, seconds=0, card="", terminal="", amount=1.0)
        unknown = sorted(set(features) - set(transaction_features(probe, (), (), recipe)))
        if unknown:
            raise NotServableError(
                f"{name} takes {len(unknown)} feature(s) the online state does not compute "
                f"(first {unknown[0]}): add them to fraud_detection/online/features.py"
            )
        return recipe

    @cached_property
    def card_lookback(self) -> int:
        """How far back (seconds) a card's entries can still count."""
        return max(self.windows.seconds)

    @cached_property
    def terminal_lookback(self) -> int:
        """How far back a terminal's entries (and their labels) can still count."""
        return max(self.windows.seconds) + self.delay_seconds

    @cached_property
    def _plan(self) -> tuple[tuple[int, str, str, str, str, str], ...]:
        """Per window: its length and its five column names (computed once, not per request)."""
        return tuple(
            (
                seconds,
                f"CUSTOMER_ID_NB_TX_{label}_WINDOW",
                f"CUSTOMER_ID_AVG_AMOUNT_{label}_WINDOW",
                f"CUSTOMER_ID_AMOUNT_RATIO_{label}_WINDOW",
                f"TERMINAL_ID_NB_TX_{label}_WINDOW",
                f"TERMINAL_ID_RISK_{label}_WINDOW",
            )
            for label, seconds in zip(self.windows.labels, self.windows.seconds, strict=True)
        )

    def describe(self) -> str:
        labels = ",".join(label.lower() for label in self.windows.labels)
        return f"windows {labels}, label delay {self.delay_seconds} s"


def transaction_features(
    transaction: RawTransaction,
    card: Sequence[CardEntry],
    terminal: Sequence[TerminalEntry],
    recipe: OnlineRecipe,
) -> dict[str, float]:
    """Every engineered feature of ``transaction``, by column name.

    Args:
        transaction: The transaction being scored.
        card: The card's transactions recorded before it (any within the card lookback).
        terminal: The terminal's transactions recorded before it, with their labels.
        recipe: The model's windows and delay.
    """
    t = transaction.seconds
    amount = transaction.amount
    day, second_of_day = divmod(t, DAY_SECONDS)
    features = {
        "TX_AMOUNT": amount,
        "TX_DURING_WEEKEND": float((day + _EPOCH_WEEKDAY) % 7 >= 5),
        "TX_DURING_NIGHT": float(second_of_day // 3600 <= NIGHT_LAST_HOUR),
    }
    delay = recipe.delay_seconds
    for window, count_name, average_name, ratio_name, traffic_name, risk_name in recipe._plan:
        count, total = 1.0, amount
        for seconds, earlier_amount in card:
            if seconds > t - window:
                count += 1.0
                total += earlier_amount
        average = total / count
        features[count_name] = count
        features[average_name] = average
        features[ratio_name] = amount / average if average > 0 else 1.0
        in_window = [
            fraud for seconds, fraud in terminal if t - delay - window < seconds <= t - delay
        ]
        frauds = float(sum(in_window))
        features[traffic_name] = float(len(in_window))
        features[risk_name] = frauds / len(in_window) if in_window else 0.0
    return features


def feature_vector(features: Mapping[str, float], recipe: OnlineRecipe) -> list[float]:
    """The values in the model's input order."""
    return [features[name] for name in recipe.features]
