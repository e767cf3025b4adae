"""Card-transaction simulator, written from the published description in Le Borgne et al. (2022).

"Reproducible Machine Learning for Credit Card Fraud Detection - Practical Handbook", chapter 3.2
describes the generator; this is an independent, vectorised NumPy implementation of that
description (the book's own code is GPL-3 and is not used here).

Customers and terminals live on a 100 x 100 square. A customer pays at the terminals within
``radius`` of home, a Poisson number of times a day, at a normally distributed time of day and
amount. Three fraud scenarios are then applied in order:

1. every amount above 220 is fraud;
2. each day some terminals are compromised for 28 days: all their transactions are fraud;
3. each day some customers are compromised for 14 days: a third of their transactions in that
   period have their amount multiplied by 5 and are fraud.

From ``drift_start`` on (empty by default: the book's data, unchanged), the data can drift
(``drift_kind``): ``terminals``, a wave of compromised terminals on top of scenario 2;
``scenario``, card testing, a fraud the book does not have (cards whose transactions turn into
small amounts at night); ``amounts``, every amount inflating week by week (labels unchanged).
The drift draws from a random stream of its own, so the days before it are the book's data bit
for bit, and so is the whole table without drift.

The book uses 2 terminals and 3 customers a day for 10,000 terminals and 5,000 customers. Smaller
populations keep the same *share* compromised per day, so a quick simulation has the book's fraud
mix at a fraction of its size (see ``SimulatorConfig``).

`simulate_transactions` returns the table in memory. `write_transactions` writes the same rows
to one Parquet file while holding about ``chunk_rows`` transactions at a time, for data sets too
large for memory (the scale benchmark's 16 M transactions); it is also a command::

    python -m fraud_detection.data.simulator --out transactions.parquet --transactions 16000000
    python -m fraud_detection.data.simulator --out drifted.parquet --n-days 200 \
        --drift-start 2018-07-30 --drift-kind scenario
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from fraud_detection.config import (
    PARQUET_SUFFIXES,
    ConfigError,
    SimulatorConfig,
    TransactionColumns,
)
from fraud_detection.config.parameters import DRIFT_KINDS
from fraud_detection.errors import PipelineError

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400
AREA_SIZE = 100.0
TIME_OF_DAY_MEAN_S = SECONDS_PER_DAY / 2
TIME_OF_DAY_STD_S = 20_000
# The share of drawn times of day that fall inside the day (the others are dropped): 0.969.
INSIDE_DAY_SHARE = math.erf(TIME_OF_DAY_MEAN_S / TIME_OF_DAY_STD_S / 2**0.5)
# Transactions per customer and day on average: 2 draws (the mean of U(0, 4)) inside the day.
TRANSACTIONS_PER_CUSTOMER_DAY = 2.0 * INSIDE_DAY_SHARE
LARGE_AMOUNT_FRAUD_THRESHOLD = 220.0
TERMINAL_COMPROMISE_DAYS = 28
CUSTOMER_COMPROMISE_DAYS = 14
# The book's rates: 2 of 10,000 terminals and 3 of 5,000 customers compromised a day.
BOOK_TERMINALS_COMPROMISED_PER_DAY_SHARE = 2 / 10_000
BOOK_CUSTOMERS_COMPROMISED_PER_DAY_SHARE = 3 / 5_000

SCENARIO_GENUINE = 0
SCENARIO_LARGE_AMOUNT = 1
SCENARIO_COMPROMISED_TERMINAL = 2
SCENARIO_COMPROMISED_CUSTOMER = 3
SCENARIO_CARD_TESTING = 4  # only with drift_kind "scenario"
DEFAULT_CHUNK_ROWS = 1_000_000


def simulate_transactions(config: SimulatorConfig) -> pd.DataFrame:
    """Simulate card transactions with fraud labels.

    The same configuration (seed included) always gives the same table.

    Returns:
        One row per transaction, sorted by time, with the columns of ``TransactionColumns``
        plus ``TX_FRAUD_SCENARIO`` (0 for genuine; for analysis only, never a feature).
    """
    rng = np.random.default_rng(config.seed)
    drift = _drift_plan(config)
    customers = _customer_profiles(config.n_customers, rng)
    terminal_xy = rng.uniform(0, AREA_SIZE, size=(config.n_terminals, 2))
    offsets, terminal_ids = _terminals_within_radius(
        customers["xy"], cKDTree(terminal_xy), config.radius
    )

    everyone = _customer_block(customers, np.diff(offsets), 0, config.n_customers, config.n_days)
    # One generator through every pass: the draws `write_transactions` reproduces block by block.
    draws = _draw_block(everyone, [rng] * len(_PASSES))
    customer, day, seconds, amount = (draws[k] for k in ("customer", "day", "seconds", "amount"))
    terminal = terminal_ids[offsets[customer] + draws["pick"]]
    seconds, amount, tested = _card_testing(
        drift, customer, day, seconds, amount, np.arange(customer.size)
    )

    order = np.lexsort((customer, seconds))
    customer, day, seconds, amount, terminal, tested = (
        array[order] for array in (customer, day, seconds, amount, terminal, tested)
    )
    compromises = _draw_compromises(config, rng, drift)
    scenario, amount = _apply_fraud_scenarios(
        customer, terminal, day, amount, tested, compromises, rng
    )
    amount = _inflate_amounts(drift, amount, day)
    table = _transaction_frame(
        np.arange(customer.size, dtype=np.int64),
        seconds,
        customer,
        terminal,
        amount,
        scenario,
        config.start_date,
    )
    columns = TransactionColumns()
    logger.info(
        "Simulated %d transactions (%.2f%% fraud) for %d customers over %d days",
        len(table),
        100 * table[columns.label_column].mean() if len(table) else 0.0,
        config.n_customers,
        config.n_days,
    )
    return table


def _customer_profiles(n_customers: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    xy = rng.uniform(0, AREA_SIZE, size=(n_customers, 2))
    mean_amount = rng.uniform(5, 100, size=n_customers)
    return {
        "xy": xy,
        "mean_amount": mean_amount,
        "std_amount": mean_amount / 2,
        "mean_per_day": rng.uniform(0, 4, size=n_customers),
    }


def _transaction_frame(
    transaction_id: np.ndarray,
    seconds: np.ndarray,
    customer: np.ndarray,
    terminal: np.ndarray,
    amount: np.ndarray,
    scenario: np.ndarray,
    start_date: str,
) -> pd.DataFrame:
    """The simulator's table (``TransactionColumns`` and the scenario), rows in time order."""
    columns = TransactionColumns()
    return pd.DataFrame(
        {
            columns.id_column: transaction_id,
            columns.timestamp_column: pd.Timestamp(start_date) + pd.to_timedelta(seconds, unit="s"),
            columns.customer_column: customer,
            columns.terminal_column: terminal,
            columns.amount_column: amount,
            columns.label_column: (scenario > 0).astype(np.int8),
            "TX_FRAUD_SCENARIO": scenario,
        }
    )


def _reachable_radius(radius: float) -> float:
    # Strictly closer than the radius, as in the book; nextafter turns the closed ball open.
    return float(np.nextafter(radius, 0))


def _terminals_within_radius(
    customer_xy: np.ndarray, tree: cKDTree, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return the reachable terminals of every customer in CSR form (offsets, terminal ids)."""
    neighbours = tree.query_ball_point(customer_xy, r=_reachable_radius(radius), return_sorted=True)
    counts = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=len(neighbours))
    offsets = np.zeros(len(neighbours) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = np.fromiter((t for n in neighbours for t in n), dtype=np.int64, count=int(offsets[-1]))
    return offsets, flat


@dataclass(frozen=True)
class _CustomerBlock:
    """Customers ``first`` .. ``first + size - 1``: what their transactions are drawn from."""

    first: int
    mean_per_day: np.ndarray
    mean_amount: np.ndarray
    std_amount: np.ndarray
    n_reachable: np.ndarray  # terminals within reach of each customer
    n_days: int


def _customer_block(
    customers: dict[str, np.ndarray], n_reachable: np.ndarray, start: int, stop: int, n_days: int
) -> _CustomerBlock:
    return _CustomerBlock(
        start,
        customers["mean_per_day"][start:stop],
        customers["mean_amount"][start:stop],
        customers["std_amount"][start:stop],
        n_reachable[start:stop],
        n_days,
    )


# The transactions are drawn in passes, each over every customer in turn (customer by customer,
# day by day): counts, times of day, amounts, the negative amounts again, terminals. Each pass
# takes the draws so far, the block and its generator, and adds to the draws.
def _draw_counts(draws: dict, block: _CustomerBlock, rng: np.random.Generator) -> None:
    size, n_days = block.mean_per_day.size, block.n_days
    per_day = rng.poisson(block.mean_per_day[:, None], size=(size, n_days)).ravel()
    draws["customer"] = np.repeat(
        np.repeat(np.arange(block.first, block.first + size), n_days), per_day
    )
    draws["day"] = np.repeat(np.tile(np.arange(n_days), size), per_day)


def _draw_times(draws: dict, block: _CustomerBlock, rng: np.random.Generator) -> None:
    size = draws["customer"].size
    time_of_day = rng.normal(TIME_OF_DAY_MEAN_S, TIME_OF_DAY_STD_S, size=size).astype(np.int64)
    # The book keeps only draws that fall inside the day.
    inside = (time_of_day > 0) & (time_of_day < SECONDS_PER_DAY)
    draws["customer"], draws["day"] = draws["customer"][inside], draws["day"][inside]
    draws["seconds"] = draws["day"].astype(np.int64) * SECONDS_PER_DAY + time_of_day[inside]


def _draw_amounts(draws: dict, block: _CustomerBlock, rng: np.random.Generator) -> None:
    local = draws["customer"] - block.first
    draws["amount"] = rng.normal(block.mean_amount[local], block.std_amount[local])


def _redraw_negative_amounts(draws: dict, block: _CustomerBlock, rng: np.random.Generator) -> None:
    amount = draws["amount"]
    negative = amount < 0
    mean = block.mean_amount[draws["customer"] - block.first]
    amount[negative] = rng.uniform(0, 2 * mean[negative])
    draws["amount"] = np.round(amount, 2)


def _draw_terminal_picks(draws: dict, block: _CustomerBlock, rng: np.random.Generator) -> None:
    """Which of its reachable terminals each transaction uses (an index into the sorted list)."""
    n_reachable = block.n_reachable[draws["customer"] - block.first]
    # A customer with no terminal within reach cannot pay anywhere: the book drops those draws.
    keep = n_reachable > 0
    for key in ("customer", "day", "seconds", "amount"):
        draws[key] = draws[key][keep]
    draws["pick"] = (rng.random(draws["customer"].size) * n_reachable[keep]).astype(np.int64)


_PASSES: tuple[Callable[[dict, _CustomerBlock, np.random.Generator], None], ...] = (
    _draw_counts,
    _draw_times,
    _draw_amounts,
    _redraw_negative_amounts,
    _draw_terminal_picks,
)


def _draw_block(
    block: _CustomerBlock, generators: Sequence[np.random.Generator]
) -> dict[str, np.ndarray]:
    """The first ``len(generators)`` passes over ``block``, pass i drawing from generator i.

    Returns:
        ``customer``, ``day``, ``seconds``, ``amount`` and ``pick`` (as far as the passes go),
        one element per transaction, customer by customer and day by day.
    """
    draws: dict[str, np.ndarray] = {}
    for one_pass, rng in zip(_PASSES, generators, strict=False):
        one_pass(draws, block, rng)
    return draws


def _daily_compromise_counts(population: int, share: float, n_days: int, rng) -> np.ndarray:
    """How many entities are compromised each day: the expected ``population * share``.

    The fractional part is drawn as a Bernoulli trial, so the book's full size gets exactly
    its 2 terminals and 3 customers a day and a smaller population keeps the same share.
    """
    expected = population * share
    whole = int(np.floor(expected))
    return whole + (rng.random(n_days) < expected - whole).astype(np.int64)


def _compromise_events(
    population: int, share: float, n_days: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw (day, entity) pairs: each day a fresh sample without replacement."""
    counts = np.minimum(_daily_compromise_counts(population, share, n_days, rng), population)
    days = np.repeat(np.arange(n_days), counts)
    entities = [rng.choice(population, size=k, replace=False) for k in counts]
    return days, np.concatenate(entities).astype(np.int64)


@dataclass(frozen=True)
class _Compromises:
    """The compromise events of scenarios 2 and 3, drawn once for the whole period."""

    terminal_days: np.ndarray  # (terminal, day): compromised that day (scenario 2)
    customer_event_day: np.ndarray  # scenario 3: each event's first day and customer
    customer_event_customer: np.ndarray
    drift: _Drift | None  # what the drift changes in the transactions themselves


def _draw_compromises(
    config: SimulatorConfig, rng: np.random.Generator, drift: _Drift | None
) -> _Compromises:
    n_days = config.n_days
    # Scenario 2: a terminal compromised on day d stays compromised on days d .. d+27.
    event_day, event_terminal = _compromise_events(
        config.n_terminals, BOOK_TERMINALS_COMPROMISED_PER_DAY_SHARE, n_days, rng
    )
    terminal_days = _active_windows(
        config.n_terminals, n_days, event_terminal, event_day, TERMINAL_COMPROMISE_DAYS
    )
    if drift is not None and drift.terminal_days is not None:
        terminal_days |= drift.terminal_days  # the wave, on top of the book's compromises
    event_day, event_customer = _compromise_events(
        config.n_customers, BOOK_CUSTOMERS_COMPROMISED_PER_DAY_SHARE, n_days, rng
    )
    return _Compromises(terminal_days, event_day, event_customer, drift)


def _amount_and_terminal_scenarios(
    amount: np.ndarray,
    terminal: np.ndarray,
    day: np.ndarray,
    tested: np.ndarray,
    compromises: _Compromises,
) -> np.ndarray:
    """Scenarios 1 and 2 (and the drift's card testing), which each transaction meets alone."""
    scenario = np.zeros(amount.size, dtype=np.int8)
    scenario[amount > LARGE_AMOUNT_FRAUD_THRESHOLD] = SCENARIO_LARGE_AMOUNT
    scenario[compromises.terminal_days[terminal, day]] = SCENARIO_COMPROMISED_TERMINAL
    scenario[tested] = SCENARIO_CARD_TESTING
    return scenario


def _multiply_compromised_amounts(amount: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Scenario 3's amounts, all rounded to cents again."""
    amount = amount.copy()
    # np.multiply.at applies the factor once per selection: a transaction picked by two
    # overlapping events is multiplied twice, as in the book.
    np.multiply.at(amount, chosen, 5.0)
    return np.round(amount, 2)


def _apply_fraud_scenarios(
    customer: np.ndarray,
    terminal: np.ndarray,
    day: np.ndarray,
    amount: np.ndarray,
    tested: np.ndarray,
    compromises: _Compromises,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Scenarios 1 to 3 in order: (scenario of each transaction, amounts after scenario 3)."""
    scenario = _amount_and_terminal_scenarios(amount, terminal, day, tested, compromises)
    # Scenario 3: per event, a third of the customer's transactions in the next 14 days.
    chosen = _third_of_transactions_per_event(
        customer,
        day,
        compromises.customer_event_customer,
        compromises.customer_event_day,
        rng,
    )
    amount = _multiply_compromised_amounts(amount, chosen)
    scenario[chosen] = SCENARIO_COMPROMISED_CUSTOMER
    return scenario, amount


def _active_windows(
    population: int, n_days: int, entity: np.ndarray, start_day: np.ndarray, length: int
) -> np.ndarray:
    """Boolean (entity, day) matrix, true on the ``length`` days after each event."""
    delta = np.zeros((population, n_days + 1), dtype=np.int32)
    np.add.at(delta, (entity, start_day), 1)
    np.add.at(delta, (entity, np.minimum(start_day + length, n_days)), -1)
    return np.cumsum(delta[:, :n_days], axis=1) > 0


def _third_of_transactions_per_event(
    customer: np.ndarray,
    day: np.ndarray,
    event_customer: np.ndarray,
    event_day: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Indices of a random third (rounded down) of each day's compromised transactions.

    As in the book, the third is drawn from the pooled transactions of all customers
    compromised on the same day, over the 14 days that follow.
    """
    if event_customer.size == 0 or customer.size == 0:
        return np.empty(0, dtype=np.int64)
    by_customer_day = np.lexsort((day, customer))
    n_days = int(max(day.max(), event_day.max())) + CUSTOMER_COMPROMISE_DAYS + 1
    key = customer[by_customer_day].astype(np.int64) * n_days + day[by_customer_day]
    first = np.searchsorted(key, event_customer * n_days + event_day, side="left")
    last = np.searchsorted(
        key, event_customer * n_days + event_day + CUSTOMER_COMPROMISE_DAYS, side="left"
    )
    sizes = last - first
    group_starts = np.cumsum(sizes) - sizes
    position = np.arange(sizes.sum()) - np.repeat(group_starts, sizes)
    candidate = by_customer_day[np.repeat(first, sizes) + position]
    candidate_day = np.repeat(event_day, sizes)
    # Rank the candidates of each event day in random order and keep the first third.
    order = np.lexsort((rng.random(candidate.size), candidate_day))
    candidate, candidate_day = candidate[order], candidate_day[order]
    pool_size = np.bincount(candidate_day, minlength=n_days)
    pool_start = np.cumsum(pool_size) - pool_size
    rank = np.arange(candidate.size) - pool_start[candidate_day]
    return candidate[rank < pool_size[candidate_day] // 3]


# --- Drift ----------------------------------------------------------------------------------
#
# Everything the drift draws comes from a generator of its own (seeded with the seed and
# DRIFT_STREAM), never from the book's generator: the book's draws, and so the days before the
# drift and the whole table without drift, stay what they were. Card testing needs a random
# number per transaction that both simulators give alike, whatever blocks they draw in: it is a
# hash of the transaction's place in the drawing order (`_uniforms`), not a draw from a stream.

DRIFT_STREAM = 0x6472_6966_74  # "drift": the drift generator's second seed word
# At strength 1: 10 more terminals per 10,000 compromised a day, five times the book's 2.
DRIFT_TERMINALS_PER_DAY_SHARE = 10 / 10_000
# At strength 1: 6 cards per 5,000 card-tested a day, twice the book's scenario 3 (3 per 5,000).
CARD_TESTING_CARDS_PER_DAY_SHARE = 6 / 5_000
CARD_TESTING_DAYS = 14
CARD_TESTING_SHARE = 0.5  # of a tested card's transactions in its window
CARD_TESTING_AMOUNT = (0.5, 5.0)  # small amounts that check the card works
NIGHT_END_S = 6 * 3_600  # card tests fall between midnight and 6 am
AMOUNT_INFLATION_PER_WEEK = 0.10  # at strength 1, compounded week by week


@dataclass(frozen=True)
class _Drift:
    """What changes from the simulated day ``day`` on, drawn once for the whole period."""

    day: int
    kind: str
    strength: float
    key: int  # of the per-transaction draws of card testing
    terminal_days: np.ndarray | None  # (terminal, day): compromised by the wave
    tested_days: np.ndarray | None  # (customer, day): inside a card-testing window


def _drift_plan(config: SimulatorConfig) -> _Drift | None:
    """The drift ``config`` asks for, or None (``drift_start`` empty)."""
    if config.drift_day is None:
        return None
    assert config.drift_kind in DRIFT_KINDS  # SimulatorConfig checked it
    rng = np.random.default_rng([config.seed, DRIFT_STREAM])
    key = int(rng.integers(2**62))
    day, days_after = config.drift_day, config.n_days - config.drift_day
    terminal_days = tested_days = None
    if config.drift_kind == "terminals":
        share = DRIFT_TERMINALS_PER_DAY_SHARE * config.drift_strength
        event_day, terminal = _compromise_events(config.n_terminals, share, days_after, rng)
        terminal_days = _active_windows(
            config.n_terminals, config.n_days, terminal, day + event_day, TERMINAL_COMPROMISE_DAYS
        )
    elif config.drift_kind == "scenario":
        share = CARD_TESTING_CARDS_PER_DAY_SHARE * config.drift_strength
        event_day, customer = _compromise_events(config.n_customers, share, days_after, rng)
        tested_days = _active_windows(
            config.n_customers, config.n_days, customer, day + event_day, CARD_TESTING_DAYS
        )
    return _Drift(day, config.drift_kind, config.drift_strength, key, terminal_days, tested_days)


def _uniforms(key: int, counter: np.ndarray, streams: int) -> list[np.ndarray]:
    """``streams`` arrays of numbers in [0, 1), one per counter value: splitmix64 hashes of
    (key, counter, stream), so a transaction gets the same numbers in any block."""
    base = counter.astype(np.uint64) * np.uint64(streams) + np.uint64(key)
    numbers = []
    with np.errstate(over="ignore"):  # the hash works modulo 2**64
        for stream in range(streams):
            z = base + np.uint64(stream + 1) * np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
            numbers.append((z >> np.uint64(11)).astype(np.float64) * 2.0**-53)
    return numbers


def _card_testing(
    drift: _Drift | None,
    customer: np.ndarray,
    day: np.ndarray,
    seconds: np.ndarray,
    amount: np.ndarray,
    draw_order: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn half the transactions of card-tested cards into small amounts at night.

    Returns:
        The transactions' seconds and amounts (copies where changed), and which are tests.
    """
    tested = np.zeros(customer.size, dtype=bool)
    if drift is None or drift.tested_days is None or customer.size == 0:
        return seconds, amount, tested
    window = np.flatnonzero(drift.tested_days[customer, day])
    pick, time_of_night, size = _uniforms(drift.key, draw_order[window], 3)
    chosen = pick < CARD_TESTING_SHARE
    rows = window[chosen]
    tested[rows] = True
    seconds, amount = seconds.copy(), amount.copy()
    # Inside the same day (after midnight, as the book's times are): the day ranges hold.
    seconds[rows] = day[rows].astype(np.int64) * SECONDS_PER_DAY + 1
    seconds[rows] += (time_of_night[chosen] * (NIGHT_END_S - 1)).astype(np.int64)
    low, high = CARD_TESTING_AMOUNT
    amount[rows] = np.round(low + size[chosen] * (high - low), 2)
    return seconds, amount, tested


def _inflate_amounts(drift: _Drift | None, amount: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Amounts after inflation: x(1 + rate) in the drift's first week, x(1 + rate)^2 in the
    second, and so on; labels were given before, on the amounts as they were."""
    if drift is None or drift.kind != "amounts":
        return amount
    rows = np.flatnonzero(day >= drift.day)
    weeks = (day[rows] - drift.day) // 7 + 1
    rate = AMOUNT_INFLATION_PER_WEEK * drift.strength
    amount = amount.copy()
    amount[rows] = np.round(amount[rows] * (1 + rate) ** weeks, 2)
    return amount


# --- Large simulations, written chunk by chunk ----------------------------------------------
#
# `simulate_transactions` makes each pass of draws over the whole population before the next
# pass starts, from one generator. Written block by block (blocks of customers), the same
# numbers need, for every block and pass, the generator's state where that pass reaches that
# block. How many numbers a pass draws for a block depends on the block's draws so far (its
# counts, which times fall inside the day, which amounts are negative), so `_pass_states` finds
# those states by drawing: pass by pass over every block, the earlier passes of each block
# replayed from their recorded states. That planning costs about a third of the writer's time
# (5 of 15 s for 4 M transactions on this project's 2-core machine), never more than one block
# in memory.
#
# The rest follows from what the in-memory table does with those draws: the transactions are
# sorted by time, then by customer, then in the order drawn (the order of the customer blocks);
# scenarios 1 and 2 concern each transaction alone; scenario 3 picks a third of the pooled
# transactions of each day's compromised customers, which only those customers' transactions in
# their 14-day windows (about 1% of all) decide. So: (1) draw each customer block, apply
# scenarios 1 and 2, keep scenario 3's candidates, and spill the block to scratch files by day
# range; (2) pick scenario 3's third among the candidates with the generator where the
# in-memory simulator would; (3) read back one day range at a time, sort it, number it, apply
# scenario 3, and append it to the Parquet file as a row group.
#
# Measured on the 2-core machine, busy with other jobs (16 M transactions, 45,104 customers,
# 183 days): `simulate_transactions` 47 s and 2.85 GB peak memory (plus 5 s to write Parquet);
# `write_transactions` 66 s and 0.59 GB, the same file. It lives beside the simulator because it
# depends on the order of its draws: change a pass above, and tests/data/test_simulator_parquet.py
# says whether the two still agree.


class SimulationOutputError(PipelineError):
    """The output file of `write_transactions` cannot be written where it was asked for."""


@dataclass(frozen=True)
class WrittenSimulation:
    """What `write_transactions` wrote."""

    path: Path
    transactions: int
    frauds: int
    row_groups: int
    seconds: float

    def describe(self) -> str:
        share = 100 * self.frauds / self.transactions if self.transactions else 0.0
        return (
            f"Wrote {self.transactions:,} transactions ({share:.2f}% fraud) in "
            f"{self.row_groups} row groups to {self.path} in {self.seconds:.1f} s"
        )


def config_for_transactions(transactions: int, **settings: Any) -> SimulatorConfig:
    """A simulation of about ``transactions`` transactions with the book's population shape:
    its 183 days (unless ``n_days`` is given) and two terminals per customer.

    Args:
        transactions: the expected number of transactions. A simulation's count is off by
            about 115% / sqrt(customers) (one standard deviation: 0.3% at 16 M transactions,
            3% at 100,000), as each customer's mean rate is drawn.
        settings: any other `SimulatorConfig` field (``n_days``, ``seed``, ...).
    """
    if transactions < 1:
        raise ConfigError(f"transactions must be at least 1, got {transactions}")
    n_days = settings.pop("n_days", SimulatorConfig.n_days)
    n_customers = max(1, round(transactions / (TRANSACTIONS_PER_CUSTOMER_DAY * n_days)))
    return SimulatorConfig(
        n_customers=n_customers, n_terminals=2 * n_customers, n_days=n_days, **settings
    )


def write_transactions(
    config: SimulatorConfig, path: str | Path, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> WrittenSimulation:
    """Write ``simulate_transactions(config)`` to the Parquet file ``path``, chunk by chunk.

    The file holds the same rows as the in-memory table (same values and types, in the same
    order), in row groups of about ``chunk_rows`` transactions; about that many are held in
    memory at a time. It appears at ``path`` only once complete.

    Raises:
        ConfigError: ``chunk_rows`` is below 1.
        SimulationOutputError: ``path`` exists already, or is not a ``.parquet`` file name.
    """
    started = time.monotonic()
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be at least 1, got {chunk_rows}")
    target = _new_parquet_file(path)
    rng = np.random.default_rng(config.seed)
    drift = _drift_plan(config)
    customers = _customer_profiles(config.n_customers, rng)
    tree = cKDTree(rng.uniform(0, AREA_SIZE, size=(config.n_terminals, 2)))
    n_reachable = tree.query_ball_point(
        customers["xy"], r=_reachable_radius(config.radius), return_length=True
    )
    blocks = _customer_blocks(customers, n_reachable, config.n_days, chunk_rows)
    day_ranges = _day_ranges(customers, config.n_days, chunk_rows)
    logger.info(
        "Simulating %d customers over %d days into %s: %d customer blocks, %d day ranges",
        config.n_customers,
        config.n_days,
        target,
        len(blocks),
        day_ranges.size - 1,
    )
    states = _pass_states(blocks, rng)
    # Where the in-memory simulator draws them.
    compromises = _draw_compromises(config, rng, drift)
    with tempfile.TemporaryDirectory(prefix=".simulation-", dir=target.parent) as scratch:
        spill = _Spill(Path(scratch), day_ranges)
        candidates = _spill_blocks(
            blocks, states, customers["xy"], tree, config, compromises, spill
        )
        chosen = _chosen_by_compromised_customers(candidates, compromises, rng)
        partial = Path(scratch) / "transactions.parquet"
        transactions, frauds, row_groups = _write_sorted(
            spill, chosen, config.start_date, partial, drift
        )
        os.replace(partial, target)
    return WrittenSimulation(target, transactions, frauds, row_groups, time.monotonic() - started)


def _new_parquet_file(path: str | Path) -> Path:
    target = Path(path).expanduser()
    if not target.name.lower().endswith(PARQUET_SUFFIXES):
        raise SimulationOutputError(
            f"{path}: the output must be a Parquet file name ({', '.join(PARQUET_SUFFIXES)})"
        )
    if target.exists():
        raise SimulationOutputError(f"{path}: already exists; remove it or choose another name")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _customer_blocks(
    customers: dict[str, np.ndarray], n_reachable: np.ndarray, n_days: int, chunk_rows: int
) -> list[_CustomerBlock]:
    """Consecutive customers whose expected transactions add up to about ``chunk_rows``."""
    expected = np.cumsum(customers["mean_per_day"] * n_days * INSIDE_DAY_SHARE)
    cuts = np.searchsorted(expected, np.arange(chunk_rows, expected[-1], chunk_rows))
    bounds = np.unique(np.concatenate([[0], cuts + 1, [expected.size]]).clip(0, expected.size))
    return [
        _customer_block(customers, n_reachable, int(start), int(stop), n_days)
        for start, stop in itertools.pairwise(bounds)
    ]


def _day_ranges(customers: dict[str, np.ndarray], n_days: int, chunk_rows: int) -> np.ndarray:
    """Edges of consecutive day ranges holding about ``chunk_rows`` transactions each."""
    per_day = customers["mean_per_day"].sum() * INSIDE_DAY_SHARE
    days = max(1, int(chunk_rows // max(per_day, 1.0)))
    return np.append(np.arange(0, n_days, days), n_days)


def _generator(state: dict[str, Any]) -> np.random.Generator:
    bit_generator = np.random.PCG64()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def _pass_states(
    blocks: list[_CustomerBlock], rng: np.random.Generator
) -> list[list[dict[str, Any]]]:
    """The generator's state where each pass reaches each block (block, then pass); ``rng`` is
    left where the in-memory simulator draws the compromise events."""
    states: list[list[dict[str, Any]]] = [[] for _ in blocks]
    for _ in _PASSES:
        for block, block_states in zip(blocks, states, strict=True):
            block_states.append(rng.bit_generator.state)
            replayed = [_generator(state) for state in block_states[:-1]]
            _draw_block(block, [*replayed, rng])
    return states


class _Spill:
    """Scratch files of drawn transactions, one folder per day range, read back range by range."""

    COLUMNS: ClassVar[dict[str, type]] = {
        "draw_order": np.int64,
        "seconds": np.int64,
        "customer": np.int64,
        "terminal": np.int64,
        "amount": np.float64,
        "scenario": np.int8,
    }

    def __init__(self, root: Path, day_edges: np.ndarray) -> None:
        self.root = root
        self.day_edges = day_edges

    def write(self, block_index: int, day: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        import pyarrow as pa
        import pyarrow.feather as feather

        day_range = np.searchsorted(self.day_edges, day, side="right") - 1
        order = np.argsort(day_range, kind="stable")
        bounds = np.searchsorted(day_range[order], np.arange(self.day_edges.size))
        for index, (start, stop) in enumerate(itertools.pairwise(bounds)):
            if stop > start:
                rows = order[start:stop]
                table = pa.table({name: columns[name][rows] for name in self.COLUMNS})
                folder = self.root / f"days-{index:05d}"
                folder.mkdir(exist_ok=True)
                feather.write_feather(
                    table, folder / f"block-{block_index:05d}.arrow", compression="uncompressed"
                )

    def read(self) -> Iterator[dict[str, np.ndarray]]:
        """Each day range's transactions in turn (its blocks in drawing order)."""
        import pyarrow as pa
        import pyarrow.feather as feather

        for folder in sorted(self.root.glob("days-*")):
            parts = [feather.read_table(f) for f in sorted(folder.glob("block-*.arrow"))]
            table = pa.concat_tables(parts)
            yield {name: table[name].to_numpy() for name in self.COLUMNS}


def _spill_blocks(
    blocks: list[_CustomerBlock],
    states: list[list[dict[str, Any]]],
    customer_xy: np.ndarray,
    tree: cKDTree,
    config: SimulatorConfig,
    compromises: _Compromises,
    spill: _Spill,
) -> dict[str, np.ndarray]:
    """Draw each block from its recorded states, apply scenarios 1 and 2, spill it by day range.

    Returns:
        Scenario 3's candidates: every transaction of a customer on a day inside one of its
        compromise windows (``customer``, ``day``, ``seconds``, ``draw_order``).
    """
    in_window = _active_windows(
        config.n_customers,
        config.n_days,
        compromises.customer_event_customer,
        compromises.customer_event_day,
        CUSTOMER_COMPROMISE_DAYS,
    )
    candidates: list[dict[str, np.ndarray]] = []
    drawn = 0
    for index, (block, block_states) in enumerate(zip(blocks, states, strict=True)):
        draws = _draw_block(block, [_generator(state) for state in block_states])
        stop = block.first + block.mean_per_day.size
        offsets, terminal_ids = _terminals_within_radius(
            customer_xy[block.first : stop], tree, config.radius
        )
        customer, day = draws["customer"], draws["day"]
        terminal = terminal_ids[offsets[customer - block.first] + draws["pick"]]
        # Ties in time and customer keep the order drawn, as the in-memory sort does.
        draw_order = drawn + np.arange(customer.size, dtype=np.int64)
        seconds, amount, tested = _card_testing(
            compromises.drift, customer, day, draws["seconds"], draws["amount"], draw_order
        )
        columns = {
            "draw_order": draw_order,
            "seconds": seconds,
            "customer": customer,
            "terminal": terminal,
            "amount": amount,
            "scenario": _amount_and_terminal_scenarios(amount, terminal, day, tested, compromises),
        }
        drawn += customer.size
        spill.write(index, day, columns)
        hit = in_window[customer, day]
        candidates.append(
            {"day": day[hit]} | {k: columns[k][hit] for k in ("customer", "seconds", "draw_order")}
        )
    return {key: np.concatenate([c[key] for c in candidates]) for key in candidates[0]}


def _time_order(seconds: np.ndarray, customer: np.ndarray, draw_order: np.ndarray) -> np.ndarray:
    """The in-memory table's order: by time, then customer, then as drawn."""
    return np.lexsort((draw_order, customer, seconds))


def _chosen_by_compromised_customers(
    candidates: dict[str, np.ndarray], compromises: _Compromises, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Scenario 3's picks among its candidates, with the in-memory simulator's draws.

    Returns:
        The picked transactions' ``draw_order`` (sorted) and how many times each was picked.
    """
    order = _time_order(candidates["seconds"], candidates["customer"], candidates["draw_order"])
    chosen = _third_of_transactions_per_event(
        candidates["customer"][order],
        candidates["day"][order],
        compromises.customer_event_customer,
        compromises.customer_event_day,
        rng,
    )
    return np.unique(candidates["draw_order"][order][chosen], return_counts=True)


def _write_sorted(
    spill: _Spill,
    chosen: tuple[np.ndarray, np.ndarray],
    start_date: str,
    path: Path,
    drift: _Drift | None,
) -> tuple[int, int, int]:
    """Each day range in time order, numbered, with scenario 3 applied, as one row group of
    the Parquet file ``path``. Returns (transactions, frauds, row groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    transactions = frauds = row_groups = 0
    writer = None
    try:
        for part in spill.read():
            frame = _numbered_frame(part, chosen, transactions, start_date, drift)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            transactions += len(frame)
            frauds += int(frame[TransactionColumns().label_column].sum())
            row_groups += 1
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # not one transaction: the table's columns, no rows
        empty = {name: np.empty(0, dtype=dtype) for name, dtype in _Spill.COLUMNS.items()}
        frame = _numbered_frame(empty, chosen, 0, start_date, drift)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return transactions, frauds, row_groups


def _numbered_frame(
    part: dict[str, np.ndarray],
    chosen: tuple[np.ndarray, np.ndarray],
    first_id: int,
    start_date: str,
    drift: _Drift | None,
) -> pd.DataFrame:
    """One day range of spilled transactions as the in-memory table's rows ``first_id`` on."""
    order = _time_order(part["seconds"], part["customer"], part["draw_order"])
    part = {key: values[order] for key, values in part.items()}
    picked = _picked_positions(part["draw_order"], *chosen)
    amount = _multiply_compromised_amounts(part["amount"], picked)
    amount = _inflate_amounts(drift, amount, part["seconds"] // SECONDS_PER_DAY)
    scenario = part["scenario"]
    scenario[picked] = SCENARIO_COMPROMISED_CUSTOMER
    ids = first_id + np.arange(scenario.size, dtype=np.int64)
    return _transaction_frame(
        ids, part["seconds"], part["customer"], part["terminal"], amount, scenario, start_date
    )


def _picked_positions(
    draw_order: np.ndarray, chosen_order: np.ndarray, times: np.ndarray
) -> np.ndarray:
    """Where scenario 3's picks are in ``draw_order``, each repeated as often as it was picked."""
    if chosen_order.size == 0:
        return np.empty(0, dtype=np.int64)
    position = np.minimum(np.searchsorted(chosen_order, draw_order), chosen_order.size - 1)
    hit = np.flatnonzero(chosen_order[position] == draw_order)
    return np.repeat(hit, times[position[hit]])


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = SimulatorConfig()
    parser = argparse.ArgumentParser(
        prog="python -m fraud_detection.data.simulator",
        description="Simulate card transactions into a Parquet file, chunk by chunk: the same "
        "rows as the pipeline's in-memory simulator for the same settings.",
    )
    parser.add_argument("--out", required=True, help="Parquet file to create (*.parquet).")
    parser.add_argument(
        "--transactions",
        type=int,
        help="About this many transactions, with the book's population shape (two terminals "
        "per customer); instead of --n-customers and --n-terminals.",
    )
    parser.add_argument(
        "--n-customers", type=int, help=f"Simulated customers (default {defaults.n_customers})."
    )
    parser.add_argument(
        "--n-terminals", type=int, help=f"Simulated terminals (default {defaults.n_terminals})."
    )
    parser.add_argument(
        "--n-days", type=int, default=defaults.n_days, help="Simulated days (default %(default)s)."
    )
    parser.add_argument(
        "--start-date", default=defaults.start_date, help="First day (default %(default)s)."
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="Same seed, same data (default %(default)s).",
    )
    parser.add_argument(
        "--radius",
        type=float,
        default=defaults.radius,
        help="Distance within which a customer uses terminals (default %(default)s).",
    )
    _add_drift_arguments(parser, defaults)
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=DEFAULT_CHUNK_ROWS,
        help="Transactions held in memory at a time, and per row group (default %(default)s).",
    )
    arguments = parser.parse_args(argv)
    population = (arguments.n_customers, arguments.n_terminals)
    if arguments.transactions is not None and population != (None, None):
        parser.error("--transactions sets the population: leave out --n-customers, --n-terminals")
    return arguments


def _add_drift_arguments(parser: argparse.ArgumentParser, defaults: SimulatorConfig) -> None:
    fields = {item.name: item for item in dataclasses.fields(SimulatorConfig)}
    for name, kind in (("drift_start", str), ("drift_kind", str), ("drift_strength", float)):
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=getattr(defaults, name),
            help=fields[name].metadata["help"] + " (default %(default)r)",
        )


def main(argv: Sequence[str] | None = None) -> int:
    """The command: write one simulation; print what was written (exit 0), or one line on a
    bad parameter (exit 2) or an output that cannot be written (exit 1)."""
    from fraud_detection.cli import EXIT_BAD_PARAMETERS, EXIT_FAILED, EXIT_OK, configure_logging

    configure_logging()
    arguments = _arguments(argv)
    settings = {
        "n_days": arguments.n_days,
        "start_date": arguments.start_date,
        "seed": arguments.seed,
        "radius": arguments.radius,
        "drift_start": arguments.drift_start,
        "drift_kind": arguments.drift_kind,
        "drift_strength": arguments.drift_strength,
    }
    try:
        if arguments.transactions is not None:
            config = config_for_transactions(arguments.transactions, **settings)
        else:
            population = {
                "n_customers": arguments.n_customers,
                "n_terminals": arguments.n_terminals,
            }
            given = {name: value for name, value in population.items() if value is not None}
            config = SimulatorConfig(**given, **settings)
        written = write_transactions(config, arguments.out, arguments.chunk_rows)
    except ConfigError as error:
        logger.error("Invalid parameter: %s", error)
        return EXIT_BAD_PARAMETERS
    except PipelineError as error:
        logger.error("%s", error)
        return EXIT_FAILED
    print(written.describe())  # the command's final report
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
