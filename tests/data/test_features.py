import numpy as np
import pandas as pd
import pytest

from fraud_detection.config import FeatureWindows, TransactionColumns
from fraud_detection.data.features import (
    AMOUNT_RATIO_COLUMNS,
    BOOK_FEATURE_COLUMNS,
    FEATURE_COLUMNS,
    add_features,
    feature_columns,
)
from tests.support.pipeline import tiny_simulation

DAYS = (pd.Timedelta(days=1), pd.Timedelta(days=7), pd.Timedelta(days=30))


def _reference_features(
    table: pd.DataFrame, delay: pd.Timedelta | int = 7, windows=DAYS
) -> pd.DataFrame:
    """The book's pandas formulation (rolling time windows per entity), slow but obvious."""
    delay = pd.Timedelta(days=delay) if isinstance(delay, int) else delay
    labels = FeatureWindows(tuple(windows)).labels
    rows = []
    for _, group in table.groupby("CUSTOMER_ID"):
        series = group.set_index("TX_DATETIME")["TX_AMOUNT"]
        out = pd.DataFrame({"TRANSACTION_ID": group["TRANSACTION_ID"].to_numpy()})
        for window, label in zip(windows, labels, strict=True):
            count = series.rolling(window).count().to_numpy()
            out[f"CUSTOMER_ID_NB_TX_{label}_WINDOW"] = count
            average = series.rolling(window).sum().to_numpy() / count
            out[f"CUSTOMER_ID_AVG_AMOUNT_{label}_WINDOW"] = average
            out[f"CUSTOMER_ID_AMOUNT_RATIO_{label}_WINDOW"] = series.to_numpy() / average
        rows.append(out.set_index("TRANSACTION_ID"))
    customer = pd.concat(rows)
    rows = []
    for _, group in table.groupby("TERMINAL_ID"):
        fraud = group.set_index("TX_DATETIME")["TX_FRAUD"].astype(float)
        frauds_delay = fraud.rolling(delay).sum()
        count_delay = fraud.rolling(delay).count()
        out = pd.DataFrame({"TRANSACTION_ID": group["TRANSACTION_ID"].to_numpy()})
        for window, label in zip(windows, labels, strict=True):
            frauds = (fraud.rolling(delay + window).sum() - frauds_delay).to_numpy()
            count = (fraud.rolling(delay + window).count() - count_delay).to_numpy()
            out[f"TERMINAL_ID_NB_TX_{label}_WINDOW"] = count
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"TERMINAL_ID_RISK_{label}_WINDOW"] = np.nan_to_num(frauds / count)
        rows.append(out.set_index("TRANSACTION_ID"))
    return customer.join(pd.concat(rows))


def test_the_books_fifteen_features_then_three_amount_ratios():
    assert len(BOOK_FEATURE_COLUMNS) == 15
    assert len(AMOUNT_RATIO_COLUMNS) == 3
    assert FEATURE_COLUMNS == BOOK_FEATURE_COLUMNS + AMOUNT_RATIO_COLUMNS
    assert len(set(FEATURE_COLUMNS)) == 18


def test_matches_the_books_rolling_windows():
    table = tiny_simulation(n_days=45)
    ours = add_features(table).set_index("TRANSACTION_ID")
    reference = _reference_features(table)
    for column in reference.columns:
        np.testing.assert_allclose(
            ours.loc[reference.index, column], reference[column], rtol=1e-9, err_msg=column
        )


def test_calendar_features():
    table = pd.DataFrame(
        {
            "TRANSACTION_ID": [1, 2, 3],
            "TX_DATETIME": pd.to_datetime(
                ["2018-04-06 06:59:00", "2018-04-07 07:00:00", "2018-04-09 12:00:00"]
            ),
            "CUSTOMER_ID": [1, 1, 1],
            "TERMINAL_ID": [1, 1, 1],
            "TX_AMOUNT": [10.0, 20.0, 60.0],
            "TX_FRAUD": [0, 0, 0],
        }
    )
    features = add_features(table)
    assert features["TX_DURING_NIGHT"].tolist() == [1, 0, 0]  # hour <= 6
    assert features["TX_DURING_WEEKEND"].tolist() == [0, 1, 0]  # Friday, Saturday, Monday
    assert features["CUSTOMER_ID_NB_TX_7DAY_WINDOW"].tolist() == [1, 2, 3]
    assert features["CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"].tolist() == [10, 15, 30]
    assert features["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].tolist() == [1, 1, 1]
    # Amount over the card's average, the current transaction included: 10/10, 20/15, 60/30.
    assert features["CUSTOMER_ID_AMOUNT_RATIO_7DAY_WINDOW"].tolist() == [1.0, 20 / 15, 2.0]
    assert features["CUSTOMER_ID_AMOUNT_RATIO_1DAY_WINDOW"].tolist() == [1.0, 1.0, 1.0]


def test_amount_ratio_is_one_when_the_average_is_not_positive():
    table = pd.DataFrame(
        {
            "TRANSACTION_ID": [1, 2, 3, 4],
            "TX_DATETIME": pd.to_datetime(
                ["2018-04-02 10:00", "2018-04-02 11:00", "2018-04-02 12:00", "2018-04-02 13:00"]
            ),
            "CUSTOMER_ID": [1, 1, 2, 2],
            "TERMINAL_ID": [1, 1, 1, 1],
            "TX_AMOUNT": [0.0, 0.0, 5.0, -20.0],  # a free item; a refund larger than the spend
            "TX_FRAUD": [0, 0, 0, 0],
        }
    )
    features = add_features(table)
    for column in AMOUNT_RATIO_COLUMNS:
        assert features[column].tolist() == [1.0, 1.0, 1.0, 1.0], column


def test_terminal_risk_only_uses_labels_older_than_the_delay():
    start = pd.Timestamp("2018-04-01 12:00")
    table = pd.DataFrame(
        {
            "TRANSACTION_ID": range(4),
            "TX_DATETIME": [
                start,
                start + pd.Timedelta(days=1),
                start + pd.Timedelta(days=8),
                start + pd.Timedelta(days=9),
            ],
            "CUSTOMER_ID": [1, 2, 3, 4],
            "TERMINAL_ID": [7, 7, 7, 7],
            "TX_AMOUNT": [1.0, 1.0, 1.0, 1.0],
            "TX_FRAUD": [1, 0, 0, 0],
        }
    )
    features = add_features(table, delay_days=7)
    # Day 1: the fraud of day 0 is only 1 day old, still unknown.
    assert features.loc[1, "TERMINAL_ID_NB_TX_7DAY_WINDOW"] == 0
    # Day 8: day 0 and day 1 are in (t-14, t-7]: 2 transactions, 1 fraud.
    assert features.loc[2, "TERMINAL_ID_NB_TX_7DAY_WINDOW"] == 2
    assert features.loc[2, "TERMINAL_ID_RISK_7DAY_WINDOW"] == 0.5
    # The 1-day window ending 7 days before day 8 covers (day 0, day 1]: only day 1.
    assert features.loc[2, "TERMINAL_ID_RISK_1DAY_WINDOW"] == 0.0
    assert features.loc[3, "TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 0


def test_no_leak_from_the_future():
    """Appending later transactions never changes the features of earlier ones."""
    history = tiny_simulation(seed=5, n_days=40)
    cutoff = pd.Timestamp("2018-04-25")
    past = history[history["TX_DATETIME"] < cutoff]
    before = add_features(past).set_index("TRANSACTION_ID")[list(FEATURE_COLUMNS)]
    after = add_features(history).set_index("TRANSACTION_ID")[list(FEATURE_COLUMNS)]
    pd.testing.assert_frame_equal(before, after.loc[before.index])


def test_future_labels_do_not_change_past_features():
    table = tiny_simulation(seed=6, n_days=40)
    relabelled = table.copy()
    late = relabelled["TX_DATETIME"] >= pd.Timestamp("2018-04-30")
    relabelled.loc[late, "TX_FRAUD"] = 1 - relabelled.loc[late, "TX_FRAUD"]
    early = ~late
    original = add_features(table)[early][list(FEATURE_COLUMNS)]
    changed = add_features(relabelled)[early][list(FEATURE_COLUMNS)]
    pd.testing.assert_frame_equal(original, changed)


def test_keeps_row_order_and_other_column_names():
    table = tiny_simulation(n_days=10).sample(frac=1.0, random_state=0)
    renamed = table.rename(columns={"TX_AMOUNT": "amount", "CUSTOMER_ID": "card"})
    columns = TransactionColumns(amount_column="amount", customer_column="card")
    features = add_features(renamed, columns)
    assert features.index.equals(renamed.index)
    expected = add_features(table)
    np.testing.assert_allclose(
        features["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"],
        expected["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"],
    )
    assert features["TX_AMOUNT"].equals(renamed["amount"].astype(float))


@pytest.mark.parametrize("delay", [0, 3, 14])
def test_other_delays_match_the_reference(delay):
    table = tiny_simulation(seed=2, n_days=45)
    ours = add_features(table, delay_days=delay).set_index("TRANSACTION_ID")
    reference = _reference_features(table, delay=delay)
    for column in [c for c in reference.columns if c.startswith("TERMINAL")]:
        np.testing.assert_allclose(
            ours.loc[reference.index, column], reference[column], err_msg=column
        )


def test_windows_of_hours_match_the_reference():
    """Hour and minute windows, and a delay of hours, on the same formulation as the book's."""
    table = tiny_simulation(seed=4, n_days=6)
    windows = FeatureWindows.parse("90min,6h,36h")
    ours = add_features(table, delay_days="2h", windows=windows).set_index("TRANSACTION_ID")
    reference = _reference_features(table, delay=pd.Timedelta(hours=2), windows=windows.durations)
    assert set(reference.columns) | set(BOOK_FEATURE_COLUMNS[:3]) == set(feature_columns(windows))
    for column in reference.columns:
        np.testing.assert_allclose(
            ours.loc[reference.index, column], reference[column], rtol=1e-9, err_msg=column
        )


def test_feature_names_say_their_window():
    windows = FeatureWindows.parse("36h,90min,45s,2d")
    names = feature_columns(windows)
    assert names[:7] == (
        "TX_AMOUNT",
        "TX_DURING_WEEKEND",
        "TX_DURING_NIGHT",
        "CUSTOMER_ID_NB_TX_36H_WINDOW",
        "CUSTOMER_ID_AVG_AMOUNT_36H_WINDOW",
        "CUSTOMER_ID_NB_TX_90MIN_WINDOW",
        "CUSTOMER_ID_AVG_AMOUNT_90MIN_WINDOW",
    )
    assert "TERMINAL_ID_RISK_45S_WINDOW" in names
    assert names[-1] == "CUSTOMER_ID_AMOUNT_RATIO_2DAY_WINDOW"
    assert len(names) == 3 + 5 * 4


def test_rows_at_the_same_instant_are_ordered_by_transaction_id():
    """Of two rows of a card at one instant, the lower id comes first, whatever the table order."""
    instant = pd.Timestamp("2018-04-02 10:00:00")
    table = pd.DataFrame(
        {
            "TRANSACTION_ID": [7, 3, 5],
            "TX_DATETIME": [instant, instant, instant + pd.Timedelta(seconds=1)],
            "CUSTOMER_ID": [1, 1, 1],
            "TERMINAL_ID": [1, 1, 1],
            "TX_AMOUNT": [70.0, 30.0, 50.0],
            "TX_FRAUD": [1, 1, 0],
        }
    )
    features = add_features(table, delay_days=0).set_index("TRANSACTION_ID")
    assert features.loc[[3, 7, 5], "CUSTOMER_ID_NB_TX_1DAY_WINDOW"].tolist() == [1, 2, 3]
    assert features.loc[7, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 50.0
    # Labels: never the row's own, and of a same-instant pair only the earlier one's.
    assert features.loc[[3, 7, 5], "TERMINAL_ID_NB_TX_1DAY_WINDOW"].tolist() == [0, 1, 2]
    without_ids = add_features(table.drop(columns="TRANSACTION_ID"), delay_days=0)
    assert without_ids["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].tolist() == [1, 2, 3]  # table order


def test_any_row_order_gives_the_features_of_the_sorted_table():
    table = tiny_simulation(seed=8, n_days=10)
    # Every transaction of a day at its midnight: each card and terminal has ties.
    table["TX_DATETIME"] = table["TX_DATETIME"].dt.floor("D")
    ordered = table.sort_values(["TX_DATETIME", "TRANSACTION_ID"])
    shuffled = table.sample(frac=1.0, random_state=1)
    expected = add_features(ordered).set_index("TRANSACTION_ID")[list(FEATURE_COLUMNS)]
    found = add_features(shuffled).set_index("TRANSACTION_ID")[list(FEATURE_COLUMNS)]
    # Counts exact; sums differ in float rounding only (they are differences of running sums
    # over every card, accumulated in another order).
    pd.testing.assert_frame_equal(found.loc[expected.index], expected, rtol=1e-9)
