"""Read transactions with Spark: a Parquet, Delta or CSV path, or a table name.

The Spark engine's counterpart of ``data.reading`` and ``data.transactions``. A source is

- a table name (``transactions``, ``sales.transactions``, ``main.sales.transactions``), read with
  ``spark.table``: a table of the session's catalog, or a view;
- a path or any URI Spark reads (``s3a://``, ``abfss://``, ``dbfs:/``, ``hdfs://``, ``file:``): a
  CSV file (``.csv``, ``.csv.gz``, ``.csv.bz2``), a Parquet file (``.parquet``, ``.pq``), a
  directory of either (as Spark writes them), or a Delta table (a directory with ``_delta_log``).

What the path is (missing, a file, a directory, a Delta table) is asked of Hadoop's file system
through the session's JVM, so the same rules hold for local paths and object stores. A Spark
Connect session has no JVM on this side: there a path is read by its suffix, Parquet otherwise.

Delta needs the Delta Lake jars in the session (Databricks has them; elsewhere the
``delta-spark`` package and its jars, which Spark fetches from Maven). Without them a Delta table
is refused with what to install. Delta reading itself is not tested in this repository: the jars
cannot be downloaded on its build machine (docs/spark.md).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import DataFrame, SparkSession

from fraud_detection.config import PARQUET_SUFFIXES, DataConfig
from fraud_detection.data.simulator import simulate_transactions
from fraud_detection.data.transactions import simulator_source
from fraud_detection.errors import DataError
from fraud_detection.spark.session import SparkUnavailableError
from fraud_detection.spark.validation import fingerprint, prepare_transactions

logger = logging.getLogger(__name__)

CSV, PARQUET, DELTA, TABLE = "csv", "parquet", "delta", "table"
# Hadoop reads these compressions by suffix; a .csv.zip (which pandas reads) it cannot.
SPARK_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2")
DELTA_LOG = "_delta_log"
INSTALL_DELTA = (
    "pip install delta-spark (the release built for your Spark version) and start the session "
    "with its jars (delta.configure_spark_with_delta_pip, or spark.jars.packages "
    "io.delta:delta-spark_2.13:<version> with spark.sql.extensions "
    "io.delta.sql.DeltaSparkSessionExtension), or run on Databricks"
)
_TABLE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*){0,2}|`[^`]+`(\.`[^`]+`){0,2}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")
_LONGEST_REASON = 300


class DeltaUnavailableError(SparkUnavailableError):
    """The source is a Delta table and the session has no Delta Lake: the message says how."""


@dataclass(frozen=True)
class SparkTransactions:
    """A checked transaction table on Spark and where it came from (``data.Transactions``)."""

    frame: DataFrame  # not sorted (Spark has no row order), with DAY_COLUMN added
    source: str  # a path, table name or simulator description, for lineage
    fingerprint: str  # Spark's content digest (not the pandas engine's: see validation.py)


def load_transactions(spark: SparkSession, config: DataConfig) -> SparkTransactions:
    """The transactions ``config`` describes, read by Spark and checked as pandas checks them."""
    if config.uses_simulator:
        source, kind = simulator_source(config), PARQUET
        frame = _simulated(spark, config)
    else:
        source = config.data.strip()
        frame, kind = _read(spark, source)
    with readable(source, kind):
        frame = prepare_transactions(frame, config, source)
        return SparkTransactions(frame, source, fingerprint(frame))


def _simulated(spark: SparkSession, config: DataConfig) -> DataFrame:
    """The simulated table (built on the driver by NumPy) as a Spark DataFrame.

    In local mode it goes through a Parquet file in a temporary directory, removed when Python
    exits: ``createDataFrame`` keeps the table inside the plan and ships it with every task,
    which ran the default 1 GB driver out of memory while featurising the default 880,000
    rows (read from Parquet, the same rows ran in 1 GB: bench/results/spark_features.json).
    A cluster's executors cannot see the driver's files, so there the table is handed over in
    the plan (give the driver memory: ``spark.driver.memory``), or simulated to shared storage
    first.
    """
    table = simulate_transactions(config.simulator())
    if not spark.sparkContext.master.startswith("local"):
        return spark.createDataFrame(table)
    directory = tempfile.mkdtemp(prefix="fraud-detection-simulated-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = os.path.join(directory, "transactions.parquet")
    table.to_parquet(path)
    return spark.read.parquet(path)


def read_source(spark: SparkSession, source: str) -> DataFrame:
    """The table at ``source`` (a path or a table name), as Spark reads it, unchecked.

    Raises:
        DataError: the path or table does not exist, is of an unsupported type or unreadable.
        DeltaUnavailableError: ``source`` is a Delta table and the session cannot read Delta.
    """
    return _read(spark, source.strip())[0]


def _read(spark: SparkSession, source: str) -> tuple[DataFrame, str]:
    """The table at ``source`` and its kind (``CSV``, ``PARQUET``, ``DELTA`` or ``TABLE``)."""
    if _is_table_name(source):
        return _read_table(spark, source), TABLE
    location = _location(spark, source)
    kind = _format(spark, location, source)
    logger.info("Reading %s with Spark as %s", source, kind)
    with readable(source, kind):
        if kind == CSV:
            return spark.read.csv(location, header=True, inferSchema=True), kind
        if kind == DELTA:
            return spark.read.format("delta").load(location), kind
        return spark.read.parquet(location), kind


def _is_table_name(source: str) -> bool:
    """A catalog name, not a path: no suffix Spark reads as a file, nothing of that name here."""
    lowered = source.lower()
    if lowered.endswith(SPARK_CSV_SUFFIXES + PARQUET_SUFFIXES) or os.path.exists(source):
        return False
    return _TABLE_NAME.fullmatch(source) is not None


def _read_table(spark: SparkSession, name: str) -> DataFrame:
    try:
        return spark.table(name)
    except AnalysisException as error:
        if _condition(error) == "TABLE_OR_VIEW_NOT_FOUND":
            raise DataError(f"{name}: no such file or table") from error
        raise DataError(f"{name}: cannot read the table ({_reason(error)})") from error


def _location(spark: SparkSession, source: str) -> str:
    """``source`` as Spark should see it: a path without a scheme is made absolute when the
    default file system is local, since Spark resolves relative paths against the directory
    its JVM started in, not the current one."""
    if _SCHEME.match(source):
        return source
    jsc = getattr(spark, "_jsc", None)
    default_fs = jsc.hadoopConfiguration().get("fs.defaultFS", "file:///") if jsc else "file:///"
    if default_fs.startswith("file:"):
        return os.path.abspath(os.path.expanduser(source))
    return source


def _format(spark: SparkSession, location: str, source: str) -> str:
    """``CSV``, ``PARQUET`` or ``DELTA`` for the file or directory at ``location``."""
    lowered = location.lower()
    entry = _probe(spark, location)
    if entry is not None and not entry.exists:
        raise DataError(f"{source}: no such file")
    if entry is None or not entry.directory:
        if lowered.endswith(SPARK_CSV_SUFFIXES):
            return CSV
        if lowered.endswith(PARQUET_SUFFIXES) or entry is None:
            return PARQUET
        if lowered.endswith(".csv.zip"):
            raise DataError(f"{source}: Spark cannot read zip files; unzip it or use gzip")
        raise DataError(
            f"{source}: unsupported file type; use {', '.join(SPARK_CSV_SUFFIXES)}, "
            f"{', '.join(PARQUET_SUFFIXES)}, a directory of them, a Delta table or a table name"
        )
    if entry.delta:
        return DELTA
    data_files = [name for name in entry.names if not name.startswith(("_", "."))]
    if data_files and all(name.lower().endswith(SPARK_CSV_SUFFIXES) for name in data_files):
        return CSV
    return PARQUET


@dataclass(frozen=True)
class _Entry:
    exists: bool
    directory: bool = False
    delta: bool = False
    names: tuple[str, ...] = ()


def _probe(spark: SparkSession, location: str) -> _Entry | None:
    """What is at ``location``, from Hadoop's file system; None on Spark Connect (no JVM)."""
    jvm, jsc = getattr(spark, "_jvm", None), getattr(spark, "_jsc", None)
    if jvm is None or jsc is None:
        return None
    hadoop_fs = jvm.org.apache.hadoop.fs
    path = hadoop_fs.Path(location)
    file_system = path.getFileSystem(jsc.hadoopConfiguration())
    if not file_system.exists(path):
        return _Entry(exists=False)
    if not file_system.getFileStatus(path).isDirectory():
        return _Entry(exists=True)
    names = tuple(status.getPath().getName() for status in file_system.listStatus(path))
    return _Entry(exists=True, directory=True, delta=DELTA_LOG in names, names=names)


@contextmanager
def readable(source: str, kind: str) -> Iterator[None]:
    """Turn Spark's errors while reading ``source`` into one line naming it and the problem.

    Spark reads lazily: a corrupt file may fail at the first action, not at ``read``; callers
    wrap the first actions on a freshly read table in this too.
    """
    try:
        yield
    except (PySparkException, Py4JJavaError) as error:
        reason = _reason(error)
        if "DATA_SOURCE_NOT_FOUND" in reason and kind == DELTA:
            raise DeltaUnavailableError(
                f"{source}: is a Delta table, and this Spark session cannot read Delta: "
                f"{INSTALL_DELTA}"
            ) from error
        if "PATH_NOT_FOUND" in reason:
            raise DataError(f"{source}: no such file") from error
        label = {CSV: "CSV file", PARQUET: "Parquet file", DELTA: "Delta table"}.get(kind, kind)
        raise DataError(f"{source}: not a readable {label} ({reason})") from error


def _condition(error: Exception) -> str | None:
    getter = getattr(error, "getCondition", None)
    return getter() if getter else None


def _reason(error: Exception) -> str:
    """The first line of Spark's message: its error class and what it says, without the
    Java stack trace that follows."""
    java = getattr(error, "java_exception", None)
    text = java.toString() if java is not None else str(error)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return first if len(first) <= _LONGEST_REASON else first[: _LONGEST_REASON - 3] + "..."
