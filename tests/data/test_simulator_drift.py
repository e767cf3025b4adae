"""Drift in the simulator: none by default (the book's data, bit for bit), and from
``drift_start`` on each kind changes what it says and nothing before, alike in memory and in
the chunked writer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from fraud_detection.config import ConfigError, DataConfig, SimulatorConfig
from fraud_detection.data.simulator import (
    AMOUNT_INFLATION_PER_WEEK,
    CARD_TESTING_AMOUNT,
    SCENARIO_CARD_TESTING,
    SCENARIO_COMPROMISED_TERMINAL,
    main,
    simulate_transactions,
    write_transactions,
)
from fraud_detection.data.transactions import simulator_source
from tests.support.digest import frame_digest

QUIET = SimulatorConfig(n_customers=500, n_terminals=1_000, n_days=60, seed=3)
DRIFT_START = "2018-05-01"  # day 30 of QUIET
# (rows, digest) of QUIET's table, taken with the simulator before drift existed (main at
# 781efa1): drift settings that are off must not move one bit of it.
QUIET_ROWS, QUIET_DIGEST = 55_317, "7ea8fd983c78ea6e"


def _drifted(kind: str, strength: float = 1.0, start: str = DRIFT_START) -> SimulatorConfig:
    return dataclasses.replace(QUIET, drift_start=start, drift_kind=kind, drift_strength=strength)


@pytest.fixture(scope="module")
def quiet() -> pd.DataFrame:
    return simulate_transactions(QUIET)


def _before_and_after(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    after = table["TX_DATETIME"] >= pd.Timestamp(DRIFT_START)
    return table[~after].reset_index(drop=True), table[after].reset_index(drop=True)


@pytest.mark.parametrize("kind", ["terminals", "scenario", "amounts"])
def test_no_drift_start_is_the_books_data_bit_for_bit(quiet, kind):
    """Whatever the kind and strength, an empty drift_start gives the table of before."""
    config = dataclasses.replace(QUIET, drift_kind=kind, drift_strength=3.0)
    assert config.drift_day is None
    table = simulate_transactions(config)
    assert (len(table), frame_digest(table)) == (QUIET_ROWS, QUIET_DIGEST)
    assert (len(quiet), frame_digest(quiet)) == (QUIET_ROWS, QUIET_DIGEST)


@pytest.mark.parametrize("kind", ["terminals", "scenario", "amounts"])
def test_nothing_changes_before_the_drift_starts(quiet, kind):
    quiet_before, _ = _before_and_after(quiet)
    drifted_before, drifted_after = _before_and_after(simulate_transactions(_drifted(kind)))
    pd.testing.assert_frame_equal(drifted_before, quiet_before, check_exact=True)
    assert len(drifted_after) > 0


def test_terminals_drift_compromises_a_wave_of_terminals(quiet):
    _, quiet_after = _before_and_after(quiet)
    _, after = _before_and_after(simulate_transactions(_drifted("terminals")))
    # The same transactions (ids, cards, terminals, amounts), more of them at compromised
    # terminals: none of the book's frauds is lost, the wave adds many.
    same = ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID"]
    pd.testing.assert_frame_equal(after[same], quiet_after[same])
    assert (after["TX_FRAUD"] >= quiet_after["TX_FRAUD"]).all()
    compromised = after["TX_FRAUD_SCENARIO"] == SCENARIO_COMPROMISED_TERMINAL
    quiet_compromised = quiet_after["TX_FRAUD_SCENARIO"] == SCENARIO_COMPROMISED_TERMINAL
    # At strength 1: 10 terminals per 10,000 a day on top of the book's 2, so several times
    # the terminals and their frauds (the book's own are still rising after day 30).
    terminals = after.loc[compromised, "TERMINAL_ID"].nunique()
    assert terminals >= 3 * quiet_after.loc[quiet_compromised, "TERMINAL_ID"].nunique()
    assert compromised.sum() >= 2 * quiet_compromised.sum()


def test_terminals_drift_grows_with_its_strength():
    frauds = [
        simulate_transactions(_drifted("terminals", strength))["TX_FRAUD"].sum()
        for strength in (0.5, 1.0, 2.0)
    ]
    assert frauds[0] < frauds[1] < frauds[2]


def test_scenario_drift_adds_card_testing_at_night(quiet):
    _, quiet_after = _before_and_after(quiet)
    table = simulate_transactions(_drifted("scenario"))
    _, after = _before_and_after(table)
    tests = table[table["TX_FRAUD_SCENARIO"] == SCENARIO_CARD_TESTING]
    assert len(tests) > 50
    assert (tests["TX_DATETIME"] >= pd.Timestamp(DRIFT_START)).all()
    assert (tests["TX_FRAUD"] == 1).all()
    assert (tests["TX_DATETIME"].dt.hour < 6).all()  # between midnight and 6 am
    low, high = CARD_TESTING_AMOUNT
    assert tests["TX_AMOUNT"].between(low, high).all()
    # A new pattern, not more of the book's: its frauds are hardly ever small at night
    # (3 of 624 here, at compromised terminals), every card test is.
    book_frauds = quiet[quiet["TX_FRAUD"] == 1]
    small_at_night = (book_frauds["TX_DATETIME"].dt.hour < 6) & (book_frauds["TX_AMOUNT"] <= high)
    assert small_at_night.mean() < 0.01
    # Tests replace transactions of the card (same rows, same cards): the volume is unchanged.
    assert len(after) == len(quiet_after)
    assert after["CUSTOMER_ID"].sum() == quiet_after["CUSTOMER_ID"].sum()
    # The table stays in time order with its ids in order.
    assert table["TX_DATETIME"].is_monotonic_increasing
    assert (table["TRANSACTION_ID"].to_numpy() == np.arange(len(table))).all()


def test_scenario_drift_tests_about_half_of_a_tested_cards_transactions():
    table = simulate_transactions(_drifted("scenario", strength=2.0))
    tested_cards = table.loc[table["TX_FRAUD_SCENARIO"] == SCENARIO_CARD_TESTING, "CUSTOMER_ID"]
    share = (table["TX_FRAUD_SCENARIO"] == SCENARIO_CARD_TESTING).groupby(
        table["CUSTOMER_ID"]
    ).sum() / table.groupby("CUSTOMER_ID").size()
    # A card is tested for 14 of the 30 days after the drift (about a quarter of its 60 days),
    # half its transactions then: a share of about 1/8, far from 0 and from all.
    assert 0.05 < share[tested_cards.unique()].median() < 0.25


def test_amounts_drift_inflates_every_amount_week_by_week(quiet):
    _, quiet_after = _before_and_after(quiet)
    _, after = _before_and_after(simulate_transactions(_drifted("amounts", strength=2.0)))
    pd.testing.assert_frame_equal(
        after.drop(columns="TX_AMOUNT"), quiet_after.drop(columns="TX_AMOUNT")
    )  # labels and scenarios are given on the amounts before inflation
    weeks = (after["TX_DATETIME"] - pd.Timestamp(DRIFT_START)).dt.days // 7 + 1
    expected = (quiet_after["TX_AMOUNT"] * (1 + 2.0 * AMOUNT_INFLATION_PER_WEEK) ** weeks).round(2)
    # Rounded to cents, as every amount (one cent apart at most from float rounding).
    assert np.abs(after["TX_AMOUNT"] - expected).max() <= 0.0100001
    assert after.groupby(weeks)["TX_AMOUNT"].mean().is_monotonic_increasing


@pytest.mark.parametrize("kind", ["terminals", "scenario", "amounts"])
@pytest.mark.parametrize("chunk_rows", [1_000_000, 2_000])
def test_the_chunked_writer_gives_the_same_drifted_rows(tmp_path, kind, chunk_rows):
    config = _drifted(kind, strength=2.0)
    path = tmp_path / "drifted.parquet"
    written = write_transactions(config, path, chunk_rows=chunk_rows)
    expected = simulate_transactions(config)
    pd.testing.assert_frame_equal(pd.read_parquet(path), expected, check_exact=True)
    assert written.frauds == expected["TX_FRAUD"].sum()


def test_the_data_config_passes_the_drift_to_the_simulator():
    data = DataConfig(
        n_customers=50, n_terminals=100, n_days=20, drift_start="2018-04-10", drift_kind="scenario"
    )
    simulator = data.simulator()
    assert (simulator.drift_day, simulator.drift_kind, simulator.drift_strength) == (
        9,
        "scenario",
        1.0,
    )
    assert simulator_source(data).endswith(
        ",drift_start=2018-04-10,drift_kind=scenario,drift_strength=1"
    )
    # Without drift, lineage names the simulator as it always did.
    assert "drift" not in simulator_source(DataConfig())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"drift_kind": "tornado"}, "drift_kind must be one of terminals, scenario, amounts"),
        ({"drift_strength": 0.0}, "drift_strength must be more than 0"),
        ({"drift_strength": -1.0}, "drift_strength must be more than 0"),
        ({"drift_strength": float("nan")}, "drift_strength must be more than 0"),
        ({"drift_strength": 1e6}, "at most 100"),
        ({"drift_start": "next tuesday"}, "drift_start must be a date"),
        ({"drift_start": "2018-05-01 12:00"}, "drift_start must be a day"),
        ({"drift_start": "2018-03-31"}, "drift_start must be one of the simulated days"),
        ({"drift_start": "2018-05-31"}, r"2018-04-01 to 2018-05-30, got '2018-05-31'"),
    ],
)
def test_bad_drift_settings_are_a_clear_config_error(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(QUIET, **changes)
    with pytest.raises(ConfigError, match=message):
        DataConfig(n_customers=500, n_terminals=1_000, n_days=60, seed=3, **changes)


def test_a_file_ignores_the_drift_but_not_a_bad_setting():
    """A model trained on drifted simulated data keeps its drift in its data recipe; retrained
    on a file (monitor --data), the recipe's drift is not an error."""
    data = DataConfig(data="transactions.csv", drift_start="2018-05-01", drift_kind="amounts")
    assert not data.uses_simulator
    with pytest.raises(ConfigError, match="drift_kind must be one of"):
        DataConfig(data="transactions.csv", drift_kind="meteor")


def test_the_command_writes_a_drifted_file(tmp_path, capsys):
    path = tmp_path / "drifted.parquet"
    arguments = ["--out", str(path), "--n-customers", "500", "--n-terminals", "1000"]
    arguments += ["--n-days", "60", "--seed", "3", "--drift-start", DRIFT_START]
    assert main([*arguments, "--drift-kind", "scenario", "--drift-strength", "2"]) == 0
    expected = simulate_transactions(_drifted("scenario", strength=2.0))
    pd.testing.assert_frame_equal(pd.read_parquet(path), expected, check_exact=True)
    assert "Wrote" in capsys.readouterr().out


def test_the_command_refuses_a_bad_drift_in_one_line(tmp_path, caplog):
    arguments = ["--out", str(tmp_path / "x.parquet"), "--n-days", "30"]
    assert main([*arguments, "--drift-start", "2018-05-01"]) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert errors == [
        "Invalid parameter: drift_start must be one of the simulated days, 2018-04-01 to "
        "2018-04-30, got '2018-05-01'"
    ]
    assert not (tmp_path / "x.parquet").exists()
