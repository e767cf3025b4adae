"""Check a transaction table before any work: every problem named with its column and source.

A bad file fails here in one clear line instead of deep inside pandas or XGBoost. The checked
table comes back sorted by time, with the day index (``schema.DAY_COLUMN``) the split uses.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from fraud_detection.config import DataConfig
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.errors import DataError


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
    _require_columns(table, required_columns(config, require_labels), source)
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
        _check_unique(table[columns.id_column], source, columns.id_column)
    return _sorted_with_days(table, columns.timestamp_column, columns.id_column)


def required_columns(config: DataConfig, require_labels: bool = True) -> list[str]:
    """The columns a table must have: time (and label), and what the features are made of."""
    columns = config.columns
    needed = [columns.timestamp_column]
    if require_labels:
        needed.append(columns.label_column)
    if config.engineered_features:
        needed += [columns.customer_column, columns.terminal_column, columns.amount_column]
    else:
        needed += list(config.passthrough_features)
    return list(dict.fromkeys(needed))


def _require_columns(table: pd.DataFrame, needed: list[str], source: str) -> None:
    missing = [name for name in needed if name not in table.columns]
    if missing:
        available = ", ".join(map(str, table.columns[:20]))
        raise DataError(
            f"{source}: missing column(s) {', '.join(missing)} (columns found: {available})"
        )


def _check_unique(ids: pd.Series, source: str, name: str) -> None:
    duplicated = ids.duplicated()
    if duplicated.any():
        first = ids[duplicated].iloc[0]
        raise DataError(
            f"{source}: column {name} has {int(duplicated.sum())} duplicated transaction "
            f"id(s), first {_shown(first)}"
        )


def _sorted_with_days(table: pd.DataFrame, timestamp_column: str, id_column: str) -> pd.DataFrame:
    """Sorted by time (then id), with the day index counted from the first day's midnight."""
    sort_keys = [timestamp_column] + ([id_column] if id_column in table.columns else [])
    table = table.sort_values(sort_keys, kind="stable").reset_index(drop=True)
    origin = table[timestamp_column].iloc[0].normalize()
    table[DAY_COLUMN] = ((table[timestamp_column] - origin) // pd.Timedelta(days=1)).astype(
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
