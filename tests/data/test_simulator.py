import numpy as np
import pandas as pd
import pytest

from fraud_detection.config import DataConfig, SimulatorConfig
from fraud_detection.data.simulator import (
    SCENARIO_COMPROMISED_CUSTOMER,
    SCENARIO_COMPROMISED_TERMINAL,
    SCENARIO_LARGE_AMOUNT,
    simulate_transactions,
)
from tests.support.pipeline import tiny_simulation

COLUMNS = [
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
]


def test_same_seed_gives_identical_data():
    pd.testing.assert_frame_equal(tiny_simulation(seed=3), tiny_simulation(seed=3))


def test_another_seed_gives_other_data():
    first, second = tiny_simulation(seed=3), tiny_simulation(seed=4)
    assert len(first) != len(second) or not first.equals(second)


def test_table_shape_and_order():
    table = tiny_simulation(n_days=10)
    assert list(table.columns) == COLUMNS
    assert table["TX_DATETIME"].is_monotonic_increasing
    assert table["TRANSACTION_ID"].is_unique
    assert table["TX_DATETIME"].min() >= pd.Timestamp("2018-04-01")
    assert table["TX_DATETIME"].max() < pd.Timestamp("2018-04-11")
    assert (table["TX_AMOUNT"] >= 0).all()
    assert set(table["TX_FRAUD"].unique()) <= {0, 1}


def test_fraud_flag_matches_scenarios():
    table = tiny_simulation(n_days=40)
    assert ((table["TX_FRAUD_SCENARIO"] > 0) == (table["TX_FRAUD"] == 1)).all()
    large = table[table["TX_FRAUD_SCENARIO"] == SCENARIO_LARGE_AMOUNT]
    assert (large["TX_AMOUNT"] > 220).all()
    # Scenario 1 is applied first: every genuine transaction is at most 220.
    assert (table.loc[table["TX_FRAUD"] == 0, "TX_AMOUNT"] <= 220).all()


def test_compromised_terminal_stays_fraudulent_for_28_days():
    table = tiny_simulation(n_days=60)
    days = (table["TX_DATETIME"] - pd.Timestamp("2018-04-01")).dt.days
    scenario2 = table[table["TX_FRAUD_SCENARIO"] == SCENARIO_COMPROMISED_TERMINAL]
    assert len(scenario2) > 0
    for terminal, first_day in (
        scenario2.assign(day=days).groupby("TERMINAL_ID")["day"].min().items()
    ):
        window = table[(table["TERMINAL_ID"] == terminal) & days.between(first_day, first_day + 27)]
        # Inside the window every transaction is fraud (scenario 3 may relabel some as 3).
        assert window["TX_FRAUD"].all(), terminal


def test_compromised_customers_have_amounts_multiplied():
    table = tiny_simulation(n_days=60)
    scenario3 = table[table["TX_FRAUD_SCENARIO"] == SCENARIO_COMPROMISED_CUSTOMER]
    assert len(scenario3) > 0
    typical = table[table["TX_FRAUD"] == 0].groupby("CUSTOMER_ID")["TX_AMOUNT"].median()
    ratio = scenario3["TX_AMOUNT"].to_numpy() / typical.reindex(scenario3["CUSTOMER_ID"]).to_numpy()
    assert np.nanmedian(ratio) > 3


# The book's full-size simulation (chapter 3.2): 5,000 customers, 10,000 terminals, 183 days.
BOOK_TRANSACTIONS = 1_754_155
BOOK_FRAUDS = 14_681
BOOK_FRAUDS_BY_SCENARIO = {1: 973, 2: 9_077, 3: 4_631}


def _fraud_shares_by_scenario(table: pd.DataFrame) -> pd.Series:
    frauds = table.loc[table["TX_FRAUD"] == 1, "TX_FRAUD_SCENARIO"]
    return frauds.value_counts(normalize=True).reindex([1, 2, 3], fill_value=0.0)


def _assert_books_statistics(table: pd.DataFrame, config: SimulatorConfig, tolerance: dict) -> None:
    per_customer_day = len(table) / (config.n_customers * config.n_days)
    assert per_customer_day == pytest.approx(
        BOOK_TRANSACTIONS / (5_000 * 183), rel=tolerance["volume"]
    )
    assert table["TX_FRAUD"].mean() == pytest.approx(
        BOOK_FRAUDS / BOOK_TRANSACTIONS, rel=tolerance["fraud_rate"]
    )
    shares = _fraud_shares_by_scenario(table)
    for scenario, count in BOOK_FRAUDS_BY_SCENARIO.items():
        # The book: 6.6% large amounts, 61.8% compromised terminals, 31.5% compromised cards.
        assert shares[scenario] == pytest.approx(
            count / BOOK_FRAUDS, abs=tolerance["share"][scenario]
        ), (scenario, shares.to_dict())


def test_reduced_size_keeps_the_books_statistics():
    """At a fifth of the book's population the volume and the fraud mix stay the book's.

    Tolerances cover the seed-to-seed spread measured at this size (fraud rate 0.74-0.90%,
    scenario shares 6-9% / 56-67% / 27-37% over seeds 0-7); a scenario applied twice, skipped
    or to the wrong share of transactions falls outside them.
    """
    config = SimulatorConfig(n_customers=1_000, n_terminals=2_000, n_days=183, seed=11)
    table = simulate_transactions(config)
    _assert_books_statistics(
        table,
        config,
        {"volume": 0.06, "fraud_rate": 0.2, "share": {1: 0.035, 2: 0.08, 3: 0.08}},
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("n_customers", 0), ("n_terminals", -1), ("n_days", 0), ("radius", 0.0), ("start_date", "x")],
)
def test_invalid_sizes_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        SimulatorConfig(**{field: value})


def test_full_book_size():
    """The book's size: 5,000 cards, 10,000 terminals, 183 days (about 1.75 M transactions)."""
    config = SimulatorConfig(seed=0)
    table = simulate_transactions(config)
    assert len(table) == pytest.approx(BOOK_TRANSACTIONS, rel=0.03)
    assert table["TX_DATETIME"].max() < pd.Timestamp("2018-10-01")
    _assert_books_statistics(
        table,
        config,
        {"volume": 0.03, "fraud_rate": 0.1, "share": {1: 0.02, 2: 0.04, 3: 0.04}},
    )


def test_the_default_runs_data_is_pinned():
    """The quick start's data (DataConfig's defaults) stays what the published figures were
    measured on: a change to the simulator (or to NumPy's streams) that moves it fails here."""
    table = simulate_transactions(DataConfig().simulator())
    assert len(table) == 879_618
    assert table["TX_FRAUD_SCENARIO"].value_counts().sort_index().to_dict() == {
        0: 872_876,
        1: 507,
        2: 4_041,
        3: 2_194,
    }
    assert round(table["TX_AMOUNT"].sum(), 2) == 48_049_144.34
    assert table["TERMINAL_ID"].sum() == 4_406_295_685
    assert table.iloc[-1].to_dict() == {
        "TRANSACTION_ID": 879_617,
        "TX_DATETIME": pd.Timestamp("2018-06-29 23:58:19"),
        "CUSTOMER_ID": 32,
        "TERMINAL_ID": 3_383,
        "TX_AMOUNT": 54.36,
        "TX_FRAUD": 0,
        "TX_FRAUD_SCENARIO": 0,
    }
