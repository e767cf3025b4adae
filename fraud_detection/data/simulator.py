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

The book uses 2 terminals and 3 customers a day for 10,000 terminals and 5,000 customers. Smaller
populations keep the same *share* compromised per day, so a quick simulation has the book's fraud
mix at a fraction of its size (see ``SimulatorConfig``).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from fraud_detection.config import (
    SimulatorConfig,
    TransactionColumns,
)

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400
AREA_SIZE = 100.0
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


def simulate_transactions(config: SimulatorConfig) -> pd.DataFrame:
    """Simulate card transactions with fraud labels.

    The same configuration (seed included) always gives the same table.

    Returns:
        One row per transaction, sorted by time, with the columns of ``TransactionColumns``
        plus ``TX_FRAUD_SCENARIO`` (0 for genuine; for analysis only, never a feature).
    """
    rng = np.random.default_rng(config.seed)
    customers = _customer_profiles(config.n_customers, rng)
    terminal_xy = rng.uniform(0, AREA_SIZE, size=(config.n_terminals, 2))
    offsets, terminal_ids = _terminals_within_radius(customers["xy"], terminal_xy, config.radius)

    customer, day, seconds, amount = _draw_transactions(customers, config.n_days, rng)
    n_reachable = np.diff(offsets)[customer]
    # A customer with no terminal within reach cannot pay anywhere: the book drops those draws.
    keep = n_reachable > 0
    customer, day, seconds, amount = customer[keep], day[keep], seconds[keep], amount[keep]
    pick = (rng.random(customer.size) * n_reachable[keep]).astype(np.int64)
    terminal = terminal_ids[offsets[customer] + pick]

    order = np.lexsort((customer, seconds))
    customer, day, seconds, amount, terminal = (
        array[order] for array in (customer, day, seconds, amount, terminal)
    )
    fraud, scenario, amount = _apply_fraud_scenarios(customer, terminal, day, amount, config, rng)

    columns = TransactionColumns()
    start = pd.Timestamp(config.start_date)
    table = pd.DataFrame(
        {
            columns.id_column: np.arange(customer.size, dtype=np.int64),
            columns.timestamp_column: start + pd.to_timedelta(seconds, unit="s"),
            columns.customer_column: customer,
            columns.terminal_column: terminal,
            columns.amount_column: amount,
            columns.label_column: fraud.astype(np.int8),
            "TX_FRAUD_SCENARIO": scenario,
        }
    )
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


def _terminals_within_radius(
    customer_xy: np.ndarray, terminal_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return the reachable terminals of every customer in CSR form (offsets, terminal ids)."""
    tree = cKDTree(terminal_xy)
    # Strictly closer than the radius, as in the book; nextafter turns the closed ball open.
    neighbours = tree.query_ball_point(customer_xy, r=np.nextafter(radius, 0), return_sorted=True)
    counts = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=len(neighbours))
    offsets = np.zeros(len(neighbours) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    flat = np.fromiter((t for n in neighbours for t in n), dtype=np.int64, count=int(offsets[-1]))
    return offsets, flat


def _draw_transactions(
    customers: dict[str, np.ndarray], n_days: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw every customer's transactions for every day: (customer, day, seconds, amount)."""
    n_customers = customers["xy"].shape[0]
    per_day = rng.poisson(customers["mean_per_day"][:, None], size=(n_customers, n_days))
    customer = np.repeat(np.repeat(np.arange(n_customers), n_days), per_day.ravel())
    day = np.repeat(np.tile(np.arange(n_days), n_customers), per_day.ravel())

    time_of_day = rng.normal(SECONDS_PER_DAY / 2, 20_000, size=customer.size).astype(np.int64)
    # The book keeps only draws that fall inside the day.
    inside = (time_of_day > 0) & (time_of_day < SECONDS_PER_DAY)
    customer, day, time_of_day = customer[inside], day[inside], time_of_day[inside]

    mean, std = customers["mean_amount"][customer], customers["std_amount"][customer]
    amount = rng.normal(mean, std)
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean[negative])
    seconds = day.astype(np.int64) * SECONDS_PER_DAY + time_of_day
    return customer, day, seconds, np.round(amount, 2)


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


def _apply_fraud_scenarios(
    customer: np.ndarray,
    terminal: np.ndarray,
    day: np.ndarray,
    amount: np.ndarray,
    config: SimulatorConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_days = config.n_days
    scenario = np.zeros(customer.size, dtype=np.int8)
    scenario[amount > LARGE_AMOUNT_FRAUD_THRESHOLD] = SCENARIO_LARGE_AMOUNT

    # Scenario 2: a terminal compromised on day d stays compromised on days d .. d+27.
    event_day, event_terminal = _compromise_events(
        config.n_terminals, BOOK_TERMINALS_COMPROMISED_PER_DAY_SHARE, n_days, rng
    )
    compromised = _active_windows(
        config.n_terminals, n_days, event_terminal, event_day, TERMINAL_COMPROMISE_DAYS
    )
    scenario[compromised[terminal, day]] = SCENARIO_COMPROMISED_TERMINAL

    # Scenario 3: per event, a third of the customer's transactions in the next 14 days.
    event_day, event_customer = _compromise_events(
        config.n_customers, BOOK_CUSTOMERS_COMPROMISED_PER_DAY_SHARE, n_days, rng
    )
    amount = amount.copy()
    chosen = _third_of_transactions_per_event(customer, day, event_customer, event_day, rng)
    # np.multiply.at applies the factor once per selection: a transaction picked by two
    # overlapping events is multiplied twice, as in the book.
    np.multiply.at(amount, chosen, 5.0)
    amount = np.round(amount, 2)
    scenario[chosen] = SCENARIO_COMPROMISED_CUSTOMER
    return scenario > 0, scenario, amount


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
