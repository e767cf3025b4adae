import numpy as np
import pandas as pd
import pytest

from fraud_detection.simulator import (
    SCENARIO_COMPROMISED_CUSTOMER,
    SCENARIO_COMPROMISED_TERMINAL,
    SCENARIO_LARGE_AMOUNT,
    SimulatorConfig,
    simulate_transactions,
)
from tests.conftest import tiny_simulation

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


def test_reduced_size_keeps_the_books_statistics():
    """At a fifth of the book's population the fraud mix stays near the book's 0.84%.

    The book (full size) reports 1,754,155 transactions and 14,681 frauds over 183 days;
    per customer and day that is 1.92 transactions.
    """
    config = SimulatorConfig(n_customers=1_000, n_terminals=2_000, n_days=183, seed=11)
    table = simulate_transactions(config)
    per_customer_day = len(table) / (config.n_customers * config.n_days)
    assert per_customer_day == pytest.approx(1_754_155 / (5_000 * 183), rel=0.06)
    assert table["TX_FRAUD"].mean() == pytest.approx(14_681 / 1_754_155, rel=0.25)
    shares = table.loc[table["TX_FRAUD"] == 1, "TX_FRAUD_SCENARIO"].value_counts(normalize=True)
    # All three scenarios are present; compromised terminals are the largest source, as in the book.
    assert set(shares.index) == {1, 2, 3}
    assert shares.idxmax() == SCENARIO_COMPROMISED_TERMINAL


@pytest.mark.parametrize(
    ("field", "value"),
    [("n_customers", 0), ("n_terminals", -1), ("n_days", 0), ("radius", 0.0), ("start_date", "x")],
)
def test_invalid_sizes_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        SimulatorConfig(**{field: value})


def test_full_book_size():
    """The book's size: 5,000 cards, 10,000 terminals, 183 days (about 1.75 M transactions)."""
    table = simulate_transactions(SimulatorConfig(seed=0))
    assert len(table) == pytest.approx(1_754_155, rel=0.03)
    assert table["TX_FRAUD"].mean() == pytest.approx(0.0084, rel=0.15)
    assert table["TX_DATETIME"].max() < pd.Timestamp("2018-10-01")
