"""Read a CSV or Parquet file of transactions, whole or in chunks, from a path or any URI.

One place for both ways of reading (training reads a table whole, batch scoring streams it in
chunks) and for the messages a bad file gets: each names the source and the problem. Where a
caller allows it (``read_table(..., parts=True)``: the monitor), the source may also be a
directory of part files, such as the score log of ``serve.py api --score-log``.
"""

from __future__ import annotations

import io
import logging
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

logger = logging.getLogger(__name__)

CSV, PARQUET = "csv", "parquet"
# Part files that writers leave beside their data (Spark's _SUCCESS, editors' .swp): skipped.
_NOT_PARTS = (".", "_")


@contextmanager
def local_file(source: str, directory: bool = False) -> Iterator[Path]:
    """A local path for ``source``: the path itself, or a download of any URI MLflow reads
    (``s3://``, ``runs:/``, ...), removed afterwards; a directory only if ``directory``."""
    if "://" in source and not source.startswith("file://"):
        import mlflow

        with tempfile.TemporaryDirectory() as download_dir:
            try:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=download_dir
                )
            except Exception as error:  # every artifact store raises its own errors
                raise DataError(f"{source}: cannot download the data file ({error})") from error
            yield _checked(Path(local), source, directory)
        return
    yield _checked(Path(source.removeprefix("file://")).expanduser(), source, directory)


def _checked(path: Path, source: str, directory: bool = False) -> Path:
    if not path.exists():
        raise DataError(f"{source}: no such file")
    if path.is_dir() and not directory:
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


def read_table(source: str, parts: bool = False) -> pd.DataFrame:
    """The whole file ``source`` as one DataFrame.

    With ``parts``, ``source`` may also be a directory: its CSV and Parquet files (names
    starting with ``.`` or ``_`` skipped), read in name order and concatenated. A CSV part is
    read up to its last complete line (a writer may be appending to it) and an empty one is
    skipped, so a log can be read while it is being written.
    """
    with local_file(source, directory=parts) as path:
        if path.is_dir():
            return _read_parts(path, source)
        with _readable(source, file_format(path, source)):
            if file_format(path, source) == CSV:
                return pd.read_csv(path)
            return pd.read_parquet(path)


def _read_parts(directory: Path, source: str) -> pd.DataFrame:
    names = sorted(
        part
        for part in directory.iterdir()
        if part.is_file()
        and not part.name.startswith(_NOT_PARTS)
        and part.name.lower().endswith(CSV_SUFFIXES + PARQUET_SUFFIXES)
    )
    if not names:
        raise DataError(
            f"{source}: no {', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)} file in the directory"
        )
    frames = []
    for part in names:
        shown = f"{source.rstrip('/')}/{part.name}"
        kind = file_format(part, shown)
        with _readable(shown, kind):
            if kind == PARQUET:
                frames.append(pd.read_parquet(part))
            elif part.name.lower().endswith(".csv"):
                frame = _complete_lines(part, shown)
                if frame is not None:
                    frames.append(frame)
            else:
                frames.append(pd.read_csv(part))  # compressed: written whole, never appended
    if not frames:
        raise DataError(f"{source}: every file in the directory is empty")
    return pd.concat(frames, ignore_index=True)


def _complete_lines(path: Path, shown: str) -> pd.DataFrame | None:
    """A CSV file up to its last line end (None: not even a header yet)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end == 0:
        return None
    if end < len(data):
        logger.warning("%s: its last line is incomplete (being written?); ignored", shown)
    return pd.read_csv(io.BytesIO(data[:end]))


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
