"""Benchmark: where one machine stops, features and training with each engine on growing data.

    python bench/scale.py --out bench/results/scale.json                  # 1 M, 4 M, 16 M
    python bench/scale.py --sizes 1000000 --out bench/results/scale_1m.json

For each size, the simulator writes that many transactions (about: the count is drawn) to one
Parquet file chunk by chunk (``data.simulator.write_transactions``, the book's population shape
over 183 days). Then, for each engine and size, a fresh Python process (so that peaks do not mix)

- features: reads the file and computes the 18 features with the default windows; pandas
  keeps the featured table in memory (``data.features.add_features``), Spark writes it to
  Parquet (``spark.features.add_features``: nothing is collected to the driver);
- training: one XGBoost fit with the default hyperparameters (``ModelConfig()``: 600 rounds,
  depth 3, 4,096 bins) on **all** featured rows, with no validation window and so no early
  stopping: every size fits the same number of trees, and the time measures the rows alone
  (pandas: ``modelling.estimators.fit_candidate``; Spark: ``spark.training.fit_spark_candidate``
  on the Parquet features). The Spark session's start is not counted.

While it runs, this script samples the resident memory (RSS) of the process tree every
``--interval`` seconds with psutil and splits it by role:

- ``driver_python``: the benchmark's own Python process (the driver);
- ``driver_jvm``: the JVM PySpark starts. In local mode the executors are threads of this same
  JVM, so its RSS is the driver's and the executors' together: an upper bound for the driver
  JVM, which RSS cannot split (a heap dump could, at a price this benchmark does not pay).
  With ``--master spark://...`` the executors are JVMs of the cluster's workers, outside this
  tree, and ``driver_jvm`` is the driver's alone;
- ``python_workers``: the other processes (PySpark's Python workers, where XGBoost trains on
  Spark): executor memory.

Figures, flat, per engine and size (``1m``, ``4m``, ``16m``): ``..._features_seconds``,
``..._features_rows_per_second``, ``..._training_seconds``, ``..._training_rows_per_second``
and ``..._<phase>_<role>_peak_gb`` (phase ``features``, ``training`` or ``all``). Between the
smallest and the largest size: ``spark_driver_memory_growth_<a>_to_<b>`` (peak driver Python
plus driver JVM at b over a; goal at most 1.2 from 4 M to 16 M) and
``<engine>_<phase>_time_growth_<a>_to_<b>`` (seconds per row at b over seconds per row at a:
1.0 is linear).

Options for other runs: ``--engines``, ``--master`` (default ``local[2]``), ``--driver-memory``
(default 4g, the executors' heap too in local mode), ``--shuffle-partitions``, ``--rounds``
(fewer trees: the tests), ``--data-dir`` (keep the simulated files and reuse them).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

PROJECT_DIR = Path(__file__).resolve().parent.parent
if str(PROJECT_DIR) not in sys.path:  # run as a script from anywhere: find the package
    sys.path.insert(0, str(PROJECT_DIR))

logger = logging.getLogger("bench.scale")

ENGINES = ("pandas", "spark")
DEFAULT_SIZES = (1_000_000, 4_000_000, 16_000_000)
ROLES = ("driver_python", "driver_jvm", "python_workers")
PHASES = ("features", "training")
GIB = 1024**3
DRIVER_MEMORY_GOAL = 1.2  # Spark's driver may grow by at most 20% from 4 M to 16 M rows


def size_label(rows: int) -> str:
    """``1m`` for 1,000,000, ``20k`` for 20,000, the number otherwise."""
    if rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}m"
    if rows % 1_000 == 0:
        return f"{rows // 1_000}k"
    return str(rows)


# --- in the measured process: one engine on one file --------------------------------------------


def run_pandas(source: Path, rounds: int | None) -> dict[str, float | int]:
    """Featurise ``source`` and fit XGBoost on all its rows with pandas; times and rows."""
    import pandas as pd

    from fraud_detection.config import ModelConfig, TransactionColumns
    from fraud_detection.data.features import add_features, feature_columns
    from fraud_detection.modelling.estimators import CandidateSpec, fit_candidate

    marks = {"features_start": time.time()}
    featured = add_features(pd.read_parquet(source))
    marks["features_end"] = marks["training_start"] = time.time()
    label = TransactionColumns().label_column
    config = ModelConfig(n_estimators=rounds) if rounds else ModelConfig()
    fit_candidate(CandidateSpec("xgboost"), config, feature_columns(), featured, label)
    marks["training_end"] = time.time()
    return {**marks, "rows": len(featured)}


def run_spark(source: Path, args: argparse.Namespace) -> dict[str, float | int]:
    """Featurise ``source`` to Parquet and fit XGBoost on all of it with Spark; times and rows."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["SPARK_MASTER"] = args.master
    # The heap must be set before the JVM starts; in local mode it is the executors' too.
    os.environ["PYSPARK_SUBMIT_ARGS"] = f"--driver-memory {args.driver_memory} pyspark-shell"
    from fraud_detection.config import ModelConfig, TransactionColumns
    from fraud_detection.data.features import feature_columns
    from fraud_detection.modelling.estimators import CandidateSpec
    from fraud_detection.spark import features as spark_features
    from fraud_detection.spark.reading import read_source
    from fraud_detection.spark.session import spark_session
    from fraud_detection.spark.training import fit_spark_candidate

    spark = spark_session("scale-bench")
    if args.shuffle_partitions:
        spark.conf.set("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
    with tempfile.TemporaryDirectory(prefix="scale-features-", dir=source.parent) as scratch:
        featured_path = str(Path(scratch) / "features.parquet")
        marks = {"features_start": time.time()}
        spark_features.add_features(read_source(spark, str(source))).write.parquet(featured_path)
        marks["features_end"] = marks["training_start"] = time.time()
        featured = spark.read.parquet(featured_path)
        label = TransactionColumns().label_column
        config = ModelConfig(n_estimators=args.rounds) if args.rounds else ModelConfig()
        fit_spark_candidate(CandidateSpec("xgboost"), config, feature_columns(), featured, label)
        marks["training_end"] = time.time()
        rows = featured.count()
    spark.stop()
    return {**marks, "rows": rows, "spark_master": args.master}


# --- in the parent: memory sampling of the measured process tree --------------------------------


@dataclass
class MemorySamples:
    """RSS samples (bytes) of a process tree by role, each with its wall-clock time."""

    times: list[float] = field(default_factory=list)
    by_role: dict[str, list[int]] = field(default_factory=lambda: {role: [] for role in ROLES})

    def take(self, root: psutil.Process) -> None:
        """One sample of ``root`` (the driver) and its descendants, split by ``ROLES``."""
        totals = dict.fromkeys(ROLES, 0)
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for process in members:
            try:
                role = _role(process, root)
                totals[role] += process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # ended between the listing and the reading
        self.times.append(time.time())
        for role in ROLES:
            self.by_role[role].append(totals[role])

    def peak_gb(self, role: str, start: float = 0.0, end: float = float("inf")) -> float:
        """The highest RSS of ``role`` sampled between ``start`` and ``end``, in GiB."""
        values = [
            value
            for moment, value in zip(self.times, self.by_role[role], strict=True)
            if start <= moment <= end
        ]
        return round(max(values, default=0) / GIB, 3)

    def driver_peak_gb(self) -> float:
        """The highest driver Python plus driver JVM RSS sampled together, in GiB."""
        pairs = zip(self.by_role["driver_python"], self.by_role["driver_jvm"], strict=True)
        return round(max((python + jvm for python, jvm in pairs), default=0) / GIB, 3)


def _role(process: psutil.Process, root: psutil.Process) -> str:
    if process.pid == root.pid:
        return "driver_python"
    if process.name() == "java":
        command = " ".join(process.cmdline())
        # A standalone cluster's executor JVMs are not in this tree; a local-cluster's are.
        return "python_workers" if "CoarseGrainedExecutorBackend" in command else "driver_jvm"
    return "python_workers"


def measure(engine: str, source: Path, args: argparse.Namespace) -> dict[str, object]:
    """Run ``engine`` on ``source`` in a fresh process, sampling its memory; its figures."""
    with tempfile.TemporaryDirectory(prefix="scale-result-") as scratch:
        result_file = Path(scratch) / "result.json"
        command = [sys.executable, __file__, "--worker", engine, "--source", str(source)]
        command += ["--result", str(result_file), "--master", args.master]
        command += ["--driver-memory", args.driver_memory]
        if args.rounds:
            command += ["--rounds", str(args.rounds)]
        if args.shuffle_partitions:
            command += ["--shuffle-partitions", str(args.shuffle_partitions)]
        samples = MemorySamples()
        process = subprocess.Popen(command, cwd=scratch)
        root = psutil.Process(process.pid)
        while process.poll() is None:
            samples.take(root)
            time.sleep(args.interval)
        if process.returncode != 0:
            raise SystemExit(f"scale: the {engine} run on {source} failed ({process.returncode})")
        marks = json.loads(result_file.read_text())
    return _figures(engine, marks, samples)


def _figures(engine: str, marks: dict, samples: MemorySamples) -> dict[str, object]:
    """Seconds, rows per second and peaks by phase and role of one measured run."""
    rows = int(marks["rows"])
    figures: dict[str, object] = {"rows": rows, "memory_samples": len(samples.times)}
    roles = ROLES if engine == "spark" else ("driver_python",)
    for phase in PHASES:
        start, end = marks[f"{phase}_start"], marks[f"{phase}_end"]
        seconds = end - start
        figures[f"{phase}_seconds"] = round(seconds, 2)
        figures[f"{phase}_rows_per_second"] = round(rows / seconds)
        for role in roles:
            figures[f"{phase}_{role}_peak_gb"] = samples.peak_gb(role, start, end)
    for role in roles:
        figures[f"all_{role}_peak_gb"] = samples.peak_gb(role)
    if engine == "spark":
        figures["all_driver_peak_gb"] = samples.driver_peak_gb()
        figures["spark_master"] = marks["spark_master"]
    return figures


# --- the parent: data, runs, ratios --------------------------------------------------------------


def simulate(rows: int, data_dir: Path) -> Path:
    """The Parquet file of about ``rows`` simulated transactions (reused when there already)."""
    from fraud_detection.data.simulator import config_for_transactions, write_transactions

    path = data_dir / f"transactions_{size_label(rows)}.parquet"
    if not path.exists():
        logger.info(write_transactions(config_for_transactions(rows), path).describe())
    return path


def growth_ratios(figures: dict[str, object], engines: list[str], sizes: list[int]) -> dict:
    """Driver memory growth (Spark) and time growth per row between the extreme sizes."""
    if len(sizes) < 2:
        return {}
    small, large = size_label(min(sizes)), size_label(max(sizes))
    span = f"{small}_to_{large}"
    ratios: dict[str, object] = {}
    for engine in engines:
        rows_ratio = figures[f"{engine}_{large}_rows"] / figures[f"{engine}_{small}_rows"]
        for phase in PHASES:
            seconds_ratio = (
                figures[f"{engine}_{large}_{phase}_seconds"]
                / figures[f"{engine}_{small}_{phase}_seconds"]
            )
            ratios[f"{engine}_{phase}_time_growth_{span}"] = round(seconds_ratio / rows_ratio, 3)
    if "spark" in engines:
        growth = figures[f"spark_{large}_all_driver_peak_gb"] / max(
            figures[f"spark_{small}_all_driver_peak_gb"], 1e-9
        )
        ratios[f"spark_driver_memory_growth_{span}"] = round(growth, 3)
        ratios[f"spark_driver_memory_growth_{span}_within_goal"] = growth <= DRIVER_MEMORY_GOAL
    return ratios


def run(args: argparse.Namespace) -> dict[str, object]:
    """Every engine on every size, each in its own process; the flat figures."""
    from fraud_detection.config import ModelConfig

    figures: dict[str, object] = {
        "sizes": args.sizes,
        "engines": args.engines,
        "training": "all featured rows, default hyperparameters, no early stopping",
        "rounds": args.rounds or ModelConfig().n_estimators,
        "spark_driver_memory": args.driver_memory,
        "cores": os.cpu_count(),
        "total_memory_gb": round(psutil.virtual_memory().total / GIB, 1),
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory(prefix="scale-data-") as scratch:
        data_dir = args.data_dir or Path(scratch)
        data_dir.mkdir(parents=True, exist_ok=True)
        for rows in args.sizes:
            source = simulate(rows, data_dir)
            for engine in args.engines:
                logger.info("%s on %s", engine, source.name)
                measured = measure(engine, source, args)
                label = size_label(rows)
                figures |= {f"{engine}_{label}_{key}": value for key, value in measured.items()}
                _report(engine, label, measured)
    return figures | growth_ratios(figures, args.engines, args.sizes)


def _report(engine: str, label: str, measured: dict[str, object]) -> None:
    print(
        f"{engine:<6} {label:>5}: features {measured['features_seconds']:8.1f} s "
        f"({measured['features_rows_per_second']:>9,} rows/s), training "
        f"{measured['training_seconds']:8.1f} s ({measured['training_rows_per_second']:>9,} "
        f"rows/s); peak driver Python {measured['all_driver_python_peak_gb']:.2f} GB"
        + (
            f", driver JVM {measured['all_driver_jvm_peak_gb']:.2f} GB, Python workers "
            f"{measured['all_python_workers_peak_gb']:.2f} GB"
            if engine == "spark"
            else ""
        ),
        flush=True,
    )


def _listed(kind: type, choices: tuple[str, ...] | None = None):
    def parse(text: str) -> list:
        values = [kind(part) for part in text.split(",") if part.strip()]
        if not values or (choices and not set(values) <= set(choices)):
            among = f" of {', '.join(choices)}" if choices else ""
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list{among}, got {text!r}"
            )
        return values

    return parse


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_listed(int), default=list(DEFAULT_SIZES))
    parser.add_argument("--engines", type=_listed(str, ENGINES), default=list(ENGINES))
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    parser.add_argument("--data-dir", type=Path, help="keep (and reuse) the simulated files here")
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    parser.add_argument("--shuffle-partitions", type=int, help="Spark SQL shuffle partitions")
    parser.add_argument(
        "--driver-memory",
        default="4g",
        help="spark.driver.memory (default 4g; local mode: the executors' heap too)",
    )
    parser.add_argument(
        "--rounds", type=int, help="boosting rounds instead of the default 600 (quicker runs)"
    )
    parser.add_argument("--interval", type=float, default=0.2, help="memory sampling seconds")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if any(size < 1 for size in args.sizes):
        parser.error("--sizes must be positive")
    return args


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = _arguments()
    if args.worker:
        if args.worker == "pandas":
            marks = run_pandas(args.source, args.rounds)
        else:
            marks = run_spark(args.source, args)
        args.result.write_text(json.dumps(marks))
        return
    figures = run(args)
    text = json.dumps(figures, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
