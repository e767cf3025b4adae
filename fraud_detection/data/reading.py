"""Read a CSV or Parquet file of transactions, whole or in chunks, from a path or any URI.

One place for both ways of reading (training reads a table whole, batch scoring streams it in
chunks) and for the messages a bad file gets: each names the source and the problem.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from fraud_detection.config import (
    CSV_SUFFIXES,
    PARQUET_SUFFIXES,
)
from fraud_detection.errors import DataError

CSV, PARQUET = "csv", "parquet"


@contextmanager
def local_file(source: str) -> Iterator[Path]:
    """A local path for ``source``: the path itself, or a download of any URI MLflow reads
    (``s3://``, ``runs:/``, ...), removed afterwards."""
    if "://" in source and not source.startswith("file://"):
        import mlflow

        with tempfile.TemporaryDirectory() as download_dir:
            try:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=download_dir
                )
            except Exception as error:  # every artifact store raises its own errors
                raise DataError(f"{source}: cannot download the data file ({error})") from error
            yield _checked(Path(local), source)
        return
    yield _checked(Path(source.removeprefix("file://")).expanduser(), source)


def _checked(path: Path, source: str) -> Path:
    if not path.exists():
        raise DataError(f"{source}: no such file")
    if path.is_dir():
        raise DataError(f"{source}: is a directory; pass a CSV or Parquet file")
    return path


def file_format(path: Path | str, source: str) -> str:
    """``CSV`` or ``PARQUET`` by the file's suffix; anything else is refused."""
    name = str(path).lower()
    if name.endswith(CSV_SUFFIXES):
        return CSV
    if name.endswith(PARQUET_SUFFIXES):
        return PARQUET
    raise DataError(
        f"{source}: unsupported file type; use {', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}"
    )


def read_table(source: str) -> pd.DataFrame:
    """The whole file ``source`` as one DataFrame."""
    with local_file(source) as path, _readable(source, file_format(path, source)):
        if file_format(path, source) == CSV:
            return pd.read_csv(path)
        return pd.read_parquet(path)


def read_chunks(source: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The file ``source`` in DataFrames of at most ``chunk_rows`` rows, in file order."""
    with local_file(source) as path:
        kind = file_format(path, source)
        with _readable(source, kind):
            if kind == CSV:
                with pd.read_csv(path, chunksize=chunk_rows) as reader:
                    yield from reader
            else:
                import pyarrow.parquet as pq

                for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
                    yield batch.to_pandas()


@contextmanager
def _readable(source: str, kind: str) -> Iterator[None]:
    """Turn the readers' errors into one line naming the file and the problem."""
    try:
        yield
    except pd.errors.EmptyDataError as error:
        raise DataError(f"{source}: the file is empty") from error
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{source}: not a readable CSV file ({error})") from error
    except (OSError, ValueError) as error:
        if kind == CSV:
            raise DataError(f"{source}: not a readable CSV file ({error})") from error
        # pyarrow raises ArrowInvalid (a ValueError) or OSError for truncated/corrupt files.
        raise DataError(f"{source}: not a readable Parquet file ({error})") from error
