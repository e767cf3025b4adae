"""The transactions a step works on: simulated, or the user's file, checked and fingerprinted."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from fraud_detection.config import DataConfig
from fraud_detection.data.reading import read_table
from fraud_detection.data.simulator import simulate_transactions
from fraud_detection.data.validation import (
    fingerprint,
    prepare_transactions,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transactions:
    """A validated transaction table and where it came from."""

    table: pd.DataFrame  # sorted by time, with DAY_COLUMN added
    source: str  # a path, URI or simulator description, for lineage
    fingerprint: str  # content digest of the table, independent of row order on disk


def load_transactions(config: DataConfig) -> Transactions:
    """Return the transactions ``config`` describes, checked and sorted by time."""
    if config.uses_simulator:
        simulator = config.simulator()
        table = simulate_transactions(simulator)
        source = simulator_source(config)
    else:
        source = config.data.strip()
        table = read_table(source)
    table = prepare_transactions(table, config, source)
    return Transactions(table=table, source=source, fingerprint=fingerprint(table))


def simulator_source(config: DataConfig) -> str:
    """How simulated data is named in lineage: the generator and its settings."""
    simulator = config.simulator()
    source = (
        f"simulator:n_customers={simulator.n_customers},n_terminals={simulator.n_terminals},"
        f"n_days={simulator.n_days},start_date={simulator.start_date},seed={simulator.seed}"
    )
    if simulator.drift_day is not None:  # without drift, the name it always had
        source += (
            f",drift_start={simulator.drift_start},drift_kind={simulator.drift_kind},"
            f"drift_strength={simulator.drift_strength:g}"
        )
    return source
