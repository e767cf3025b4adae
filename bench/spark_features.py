"""The Spark engine's features against the pandas engine's on the default simulated data.

Simulates the default data (the quick start's 5,000 cards, 10,000 terminals, 90 days), writes it
to Parquet, reads, checks and featurises it with Spark (``local[2]``, on 127.0.0.1), computes
the same features with pandas, and reports per feature how many counts differ and the largest
relative difference of the rest, with the seconds each engine took (Spark's include reading and
checking; its session start is not counted).

    python bench/spark_features.py --out bench/results/spark_features.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_DIR = Path(__file__).resolve().parents[1]


def compare(workdir: Path, master: str) -> dict[str, object]:
    """Featurise the default data with both engines under ``workdir``; return the figures."""
    os.environ.update({"SPARK_LOCAL_IP": "127.0.0.1", "SPARK_MASTER": master})
    import pandas as pd

    from fraud_detection.config import DataConfig
    from fraud_detection.data.features import FEATURE_COLUMNS, add_features
    from fraud_detection.data.transactions import load_transactions
    from fraud_detection.spark import features as spark_features
    from fraud_detection.spark import reading
    from fraud_detection.spark.session import spark_session

    table = load_transactions(DataConfig()).table
    started = time.perf_counter()
    expected = add_features(table).set_index("TRANSACTION_ID").sort_index()
    pandas_seconds = time.perf_counter() - started
    source = workdir / "transactions.parquet"
    table.drop(columns="TX_TIME_DAYS").to_parquet(source)
    spark = spark_session("spark-features-bench")
    started = time.perf_counter()
    loaded = reading.load_transactions(spark, DataConfig(data=str(source)))
    featured = workdir / "features.parquet"
    spark_features.add_features(loaded.frame).write.parquet(str(featured))
    spark_seconds = time.perf_counter() - started
    actual = pd.read_parquet(featured).set_index("TRANSACTION_ID").sort_index()
    differences = {}
    for name in FEATURE_COLUMNS:
        ours, theirs = actual[name].to_numpy(np.float64), expected[name].to_numpy(np.float64)
        if "NB_TX" in name or name.startswith("TX_"):
            differences[name] = {"counts_differing": int(np.sum(ours != theirs))}
        else:
            relative = np.abs(ours - theirs) / np.maximum(np.abs(theirs), np.finfo(float).tiny)
            differences[name] = {"max_relative_difference": float(relative.max())}
    return {
        "rows": len(table),
        "spark_master": spark.sparkContext.master,
        "pandas_seconds": round(pandas_seconds, 1),
        "spark_seconds": round(spark_seconds, 1),
        "cores": os.cpu_count(),
        "features": differences,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    args = parser.parse_args()
    sys.path.insert(0, str(PROJECT_DIR))
    with tempfile.TemporaryDirectory(prefix="spark-features-") as scratch:
        figures = compare(Path(scratch), args.master)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
