"""The simulator written chunk by chunk to Parquet: the same rows as in memory, a chunk at a
time, and its command."""

import subprocess
import sys
import tracemalloc

import pandas as pd
import pyarrow.parquet as pq
import pytest

from fraud_detection.config import ConfigError, SimulatorConfig
from fraud_detection.data.simulator import (
    SimulationOutputError,
    config_for_transactions,
    main,
    simulate_transactions,
    write_transactions,
)
from tests.support import PROJECT_DIR
from tests.support.pipeline import SMALL_DATA

TINY = SimulatorConfig(n_customers=100, n_terminals=200, n_days=20, seed=3)


def _row_group_sizes(path) -> list[int]:
    metadata = pq.ParquetFile(path).metadata
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]


@pytest.mark.parametrize(
    ("config", "chunk_rows"),
    [
        pytest.param(TINY, 1_000_000, id="one-chunk"),
        # Blocks of a few customers, and day ranges of one day.
        pytest.param(TINY, 150, id="tiny-chunks"),
        # Scenario 3's pools span many customer blocks; compromise windows overlap.
        pytest.param(SMALL_DATA.simulator(), 7_000, id="small-data"),
        # Few terminals: customers with none within reach, whose draws are dropped.
        pytest.param(
            SimulatorConfig(n_customers=300, n_terminals=50, n_days=30, seed=5, radius=3.0),
            500,
            id="unreachable-terminals",
        ),
    ],
)
def test_the_file_holds_the_in_memory_table(tmp_path, config, chunk_rows):
    path = tmp_path / "transactions.parquet"
    written = write_transactions(config, path, chunk_rows=chunk_rows)

    expected = simulate_transactions(config)
    pd.testing.assert_frame_equal(pd.read_parquet(path), expected, check_exact=True)
    assert written.transactions == len(expected)
    assert written.frauds == expected["TX_FRAUD"].sum()
    assert written.row_groups == len(_row_group_sizes(path))
    if chunk_rows < len(expected):
        assert written.row_groups > 1


def test_memory_holds_about_one_chunk(tmp_path):
    """Python's allocations (NumPy's included) peak at a fraction of the in-memory simulator's:
    only a block of customers or a range of days is held at a time."""
    config = SimulatorConfig(n_customers=1_000, n_terminals=2_000, n_days=183, seed=11)
    tracemalloc.start()
    try:
        table = simulate_transactions(config)
        in_memory_peak = tracemalloc.get_traced_memory()[1]
        del table
        tracemalloc.reset_peak()
        written = write_transactions(config, tmp_path / "t.parquet", chunk_rows=20_000)
        chunked_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Measured: 7.5 MB against 55 MB for 352,636 transactions.
    assert chunked_peak < in_memory_peak / 4, (chunked_peak, in_memory_peak)
    # Row groups (one per range of days) of about chunk_rows transactions.
    sizes = _row_group_sizes(written.path)
    assert len(sizes) > 10
    assert max(sizes) < 1.2 * 20_000


def test_nothing_but_the_file_is_left(tmp_path):
    folder = tmp_path / "out"  # created, with the scratch files inside until they go
    write_transactions(TINY, folder / "t.parquet", chunk_rows=500)
    assert [p.name for p in folder.rglob("*")] == ["t.parquet"]


def test_an_existing_file_is_not_overwritten(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_text("precious")
    with pytest.raises(SimulationOutputError, match=r"t\.parquet: already exists"):
        write_transactions(TINY, path)
    assert path.read_text() == "precious"


def test_the_output_must_be_named_as_parquet(tmp_path):
    with pytest.raises(SimulationOutputError, match=r"t\.csv: the output must be a Parquet file"):
        write_transactions(TINY, tmp_path / "t.csv")


def test_chunk_rows_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="chunk_rows must be at least 1, got 0"):
        write_transactions(TINY, tmp_path / "t.parquet", chunk_rows=0)


def test_config_for_transactions_keeps_the_books_shape():
    config = config_for_transactions(16_000_000, seed=4)
    assert (config.n_customers, config.n_terminals, config.n_days, config.seed) == (
        45_104,
        90_208,
        183,
        4,
    )
    assert config_for_transactions(1_000, n_days=10).n_days == 10
    with pytest.raises(ConfigError, match="transactions must be at least 1"):
        config_for_transactions(0)


def test_config_for_transactions_gives_about_that_many():
    # 1,410 customers: one standard deviation of the count is 3% (115% / sqrt(customers)).
    table = simulate_transactions(config_for_transactions(500_000, seed=2))
    assert len(table) == pytest.approx(500_000, rel=0.09)


def test_command_writes_the_file(tmp_path, capsys):
    path = tmp_path / "t.parquet"
    arguments = ["--out", str(path), "--n-customers", "100", "--n-terminals", "200"]
    assert main([*arguments, "--n-days", "20", "--seed", "3", "--chunk-rows", "500"]) == 0
    assert capsys.readouterr().out.startswith(f"Wrote {len(pd.read_parquet(path)):,} transactions")
    pd.testing.assert_frame_equal(pd.read_parquet(path), simulate_transactions(TINY))


def test_command_refuses_bad_parameters_in_one_line(tmp_path, caplog):
    assert main(["--out", str(tmp_path / "t.parquet"), "--n-days", "0"]) == 2
    assert "Invalid parameter: n_days must be at least 1, got 0" in caplog.text
    (tmp_path / "t.parquet").touch()
    assert main(["--out", str(tmp_path / "t.parquet"), "--n-days", "2"]) == 1
    assert "already exists" in caplog.text
    with pytest.raises(SystemExit) as stopped:
        main(["--out", "x.parquet", "--transactions", "1000", "--n-customers", "5"])
    assert stopped.value.code == 2


def test_command_runs_as_documented(tmp_path):
    path = tmp_path / "t.parquet"
    command = [sys.executable, "-m", "fraud_detection.data.simulator", "--out", str(path)]
    command += ["--transactions", "20000", "--n-days", "30", "--chunk-rows", "5000"]
    result = subprocess.run(
        command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("Wrote ")
    assert len(pd.read_parquet(path)) == pytest.approx(20_000, rel=0.2)
