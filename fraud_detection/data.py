"""Load transactions (simulated, or the user's CSV/Parquet) and check them before any work.

Every check names the source, the column and the problem, so that a bad file fails in one clear
line instead of deep inside pandas or XGBoost.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fraud_detection.config import DataConfig
from fraud_detection.errors import DataError
from fraud_detection.schema import DAY_COLUMN
from fraud_detection.simulator import simulate_transactions

logger = logging.getLogger(__name__)

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.zip", ".csv.bz2")
PARQUET_SUFFIXES = (".parquet", ".pq")


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
        source = (
            f"simulator:n_customers={simulator.n_customers},n_terminals={simulator.n_terminals},"
            f"n_days={simulator.n_days},start_date={simulator.start_date},seed={simulator.seed}"
        )
    else:
        source = config.data.strip()
        table = read_table(source)
    table = prepare_transactions(table, config, source)
    return Transactions(table=table, source=source, fingerprint=fingerprint(table))


def read_table(source: str) -> pd.DataFrame:
    """Read a CSV or Parquet file from a local path or any URI MLflow can download."""
    if "://" in source and not source.startswith("file://"):
        with tempfile.TemporaryDirectory() as download_dir:
            local = _download(source, download_dir)
            return _read_local(local, source)
    return _read_local(Path(source.removeprefix("file://")).expanduser(), source)


def _download(uri: str, download_dir: str) -> Path:
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=download_dir))
    except Exception as error:
        raise DataError(f"{uri}: cannot download the data file ({error})") from error


def _read_local(path: Path, source: str) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{source}: no such file")
    if path.is_dir():
        raise DataError(f"{source}: is a directory; pass a CSV or Parquet file")
    name = path.name.lower()
    try:
        if name.endswith(CSV_SUFFIXES):
            return pd.read_csv(path)
        if name.endswith(PARQUET_SUFFIXES):
            return pd.read_parquet(path)
    except pd.errors.EmptyDataError as error:
        raise DataError(f"{source}: the file is empty") from error
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{source}: not a readable CSV file ({error})") from error
    except (OSError, ValueError) as error:
        # pyarrow raises ArrowInvalid (a ValueError) or OSError for truncated/corrupt files.
        raise DataError(f"{source}: not a readable Parquet file ({error})") from error
    raise DataError(
        f"{source}: unsupported file type; use {', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}"
    )


def prepare_transactions(
    table: pd.DataFrame, config: DataConfig, source: str, require_labels: bool = True
) -> pd.DataFrame:
    """Check ``table`` against the schema ``config`` describes; return it sorted, with days.

    Args:
        table: Raw transactions.
        config: Column names and feature choice.
        source: Where the table came from, for error messages.
        require_labels: False when scoring: the label column may be absent or partly empty.
    """
    columns = config.columns
    if table.empty:
        raise DataError(f"{source}: no rows")
    needed = [columns.timestamp_column]
    if require_labels:
        needed.append(columns.label_column)
    if config.engineered_features:
        needed += [columns.customer_column, columns.terminal_column, columns.amount_column]
    else:
        needed += list(config.passthrough_features)
    missing = [name for name in dict.fromkeys(needed) if name not in table.columns]
    if missing:
        available = ", ".join(map(str, table.columns[:20]))
        raise DataError(
            f"{source}: missing column(s) {', '.join(missing)} (columns found: {available})"
        )

    table = table.copy()
    table[columns.timestamp_column] = _parse_timestamps(
        table[columns.timestamp_column], source, columns.timestamp_column
    )
    if columns.label_column in table.columns:
        table[columns.label_column] = _check_labels(
            table[columns.label_column],
            source,
            columns.label_column,
            allow_missing=not require_labels,
        )
    numeric = (
        [columns.amount_column] if config.engineered_features else list(config.passthrough_features)
    )
    for name in numeric:
        _check_numeric(table[name], source, name)
    if columns.id_column in table.columns:
        duplicated = table[columns.id_column].duplicated()
        if duplicated.any():
            first = table.loc[duplicated, columns.id_column].iloc[0]
            raise DataError(
                f"{source}: column {columns.id_column} has {int(duplicated.sum())} "
                f"duplicated transaction id(s), first {_shown(first)}"
            )

    sort_keys = [columns.timestamp_column]
    if columns.id_column in table.columns:
        sort_keys.append(columns.id_column)
    table = table.sort_values(sort_keys, kind="stable").reset_index(drop=True)
    origin = table[columns.timestamp_column].iloc[0].normalize()
    table[DAY_COLUMN] = ((table[columns.timestamp_column] - origin) // pd.Timedelta(days=1)).astype(
        np.int64
    )
    return table


def _parse_timestamps(values: pd.Series, source: str, name: str) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    elif pd.api.types.is_numeric_dtype(values):
        # Numbers are seconds since the epoch (or since the first transaction, as in some
        # public data sets): either way, differences in days are what the pipeline uses.
        parsed = pd.to_datetime(values, unit="s", errors="coerce")
    else:
        parsed = pd.to_datetime(values, errors="coerce", format="mixed")
    bad = parsed.isna()
    if bad.any():
        first = values[bad].iloc[0]
        raise DataError(
            f"{source}: column {name} has {int(bad.sum())} value(s) that are not timestamps, "
            f"first {_shown(first)}"
        )
    return parsed


def _shown(value: object) -> str:
    """A value as the user wrote it: 2 and '2018-xx', not np.int64(2)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _check_labels(values: pd.Series, source: str, name: str, allow_missing: bool) -> pd.Series:
    present = values.dropna() if allow_missing else values
    if present.isna().any():
        raise DataError(f"{source}: column {name} has {int(present.isna().sum())} missing label(s)")
    numeric = pd.to_numeric(present, errors="coerce")
    bad = numeric.isna() | ~numeric.isin([0, 1])
    if bad.any():
        examples = ", ".join(map(_shown, present[bad].unique()[:3]))
        raise DataError(f"{source}: column {name} must hold 0/1 labels, found {examples}")
    labels = pd.to_numeric(values, errors="coerce")
    return labels.astype("Int8") if allow_missing else labels.astype(np.int8)


def _check_numeric(values: pd.Series, source: str, name: str) -> None:
    if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
        raise DataError(f"{source}: column {name} must be numeric, found {values.dtype}")
    missing = values.isna()
    if missing.any():
        raise DataError(f"{source}: column {name} has {int(missing.sum())} missing value(s) (NaN)")
    if pd.api.types.is_float_dtype(values) and not np.isfinite(values.to_numpy()).all():
        raise DataError(f"{source}: column {name} has infinite value(s)")


def require_both_classes(labels: pd.Series, where: str) -> None:
    """Fail with a clear message when ``labels`` lacks fraud or genuine transactions."""
    counts = labels.value_counts()
    if counts.get(1, 0) == 0 or counts.get(0, 0) == 0:
        present = "only fraud" if counts.get(0, 0) == 0 else "no fraud"
        raise DataError(
            f"{where}: {len(labels)} transaction(s) with {present}; a fraud model needs both "
            "classes. Widen the window or check the label column."
        )


def fingerprint(table: pd.DataFrame) -> str:
    """Content digest of a table: same rows and columns give the same 16 hex characters."""
    digest = hashlib.sha256()
    digest.update(",".join(f"{c}:{table[c].dtype}" for c in table.columns).encode())
    digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]
