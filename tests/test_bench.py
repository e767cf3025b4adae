"""The handbook benchmark still runs against the package (tiny data: checks wiring, not figures)."""

import json
import subprocess
import sys

import mlflow
import pytest

from tests.support import PROJECT_DIR
from tests.support.spark import require_spark

SCRIPT = PROJECT_DIR / "bench" / "reproduce_handbook.py"
TINY = ["--n-customers", "300", "--n-terminals", "600", "--n-folds", "1", "--n-jobs", "1"]


def _bench(*arguments: str, cwd) -> subprocess.CompletedProcess:
    # From tmp_path: MLflow puts the artifacts of a new SQLite store under the working directory.
    return subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_benchmark_writes_figures_and_logs_every_model(tmp_path):
    uri = f"sqlite:///{tmp_path / 'bench.db'}"
    out = tmp_path / "figures.json"
    models = "logistic_regression_book,xgboost_book,xgboost_template"
    result = _bench("--models", models, "--tracking-uri", uri, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Test, 1-fold prequential" in result.stdout
    assert "Speed" in result.stdout

    figures = json.loads(out.read_text())
    assert set(figures) == set(models.split(","))
    for row in figures.values():
        assert set(row) == {"roc_auc", "average_precision", "card_precision_at_100"}
        assert all(0.0 <= value <= 1.0 for value in row.values())

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("handbook-benchmark")
    runs = client.search_runs([experiment.experiment_id])
    # One benchmark run, one run per model, one per model and fold (1 test + 1 validation).
    assert len(runs) == 1 + 3 + 3 * 2
    assert all(run.info.status == "FINISHED" for run in runs)
    folds = [run for run in runs if "role" in run.data.params]
    assert {run.data.params["role"] for run in folds} == {"test", "validation"}
    assert all("average_precision" in run.data.metrics for run in folds)


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["--models", "svm"], 2, "models: unknown or empty svm"),
        (["--train-start", "someday"], 2, "train_start must be a date"),
        (["--train-start", "2018-09-20"], 1, "the split does not fit the data"),
    ],
)
def test_bad_options_fail_in_one_line(arguments, code, message, tmp_path):
    result = _bench(
        *arguments, "--tracking-uri", f"sqlite:///{tmp_path / 'bench.db'}", cwd=tmp_path
    )
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_tracking_overhead_benchmark_times_both_and_writes_its_figures(tmp_path):
    out = tmp_path / "overhead.json"
    result = subprocess.run(
        [
            sys.executable,
            str(PROJECT_DIR / "bench" / "tracking_overhead.py"),
            *("--repeats", "1", "--n-customers", "500", "--n-terminals", "1000"),
            *("--n-days", "60", "--grid", "none", "--n-estimators", "60", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tracking overhead:" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["train_tracking_off_seconds"] > 0
    assert figures["train_tracking_on_seconds"] > 0
    assert figures["server_cpu_seconds"] > 0  # the tracked step's requests reached the server
    assert figures["transactions"] == "500 customers, 1000 terminals, 60 days"


@pytest.mark.no_tracking_store
def test_install_footprint_benchmark_measures_a_fresh_venv(tmp_path):
    # `pip install --no-index pip` installs nothing: this checks the wiring (a venv made, timed,
    # measured and removed), not the project's figures, and needs no network.
    out = tmp_path / "footprint.json"
    result = subprocess.run(
        [
            sys.executable,
            str(PROJECT_DIR / "bench" / "install_footprint.py"),
            *("--python", sys.executable, "--pip-args=--no-index pip", "--top", "3"),
            *("--scratch", str(tmp_path), "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "venv size:" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["command"] == "pip install --no-index pip"
    (project,) = figures["projects"]
    assert project["project"] == str(PROJECT_DIR)
    assert project["install_seconds_median"] >= 0
    assert project["venv_bytes"] > project["largest_distributions"][0]["bytes"] > 0
    assert "pip" in project["distributions"]
    assert len(project["largest_distributions"]) <= 3
    assert list(tmp_path.iterdir()) == [out]  # the venv is gone


def _scale(*arguments: str, cwd) -> subprocess.CompletedProcess:
    quick = ("--rounds", "5", "--shuffle-partitions", "4", "--driver-memory", "1g")
    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / "bench" / "scale.py"), *quick, *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def _peaks_and_rates(figures: dict, prefix: str, roles: tuple[str, ...]) -> None:
    assert figures[f"{prefix}_rows"] > 1_000  # the simulator draws about the size asked for
    for phase in ("features", "training"):
        assert figures[f"{prefix}_{phase}_rows_per_second"] > 0
        for role in roles:
            assert figures[f"{prefix}_{phase}_{role}_peak_gb"] >= 0
    # The measured process itself holds at least the interpreter and pandas.
    assert figures[f"{prefix}_all_driver_python_peak_gb"] > 0.05


def test_scale_benchmark_measures_pandas_and_its_growth(tmp_path):
    out = tmp_path / "scale.json"
    result = _scale(
        "--engines", "pandas", "--sizes", "20000,30000", "--out", str(out), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pandas   20k: features" in result.stdout
    figures = json.loads(out.read_text())
    for size in ("20k", "30k"):
        _peaks_and_rates(figures, f"pandas_{size}", ("driver_python",))
    assert not any(key.startswith(("spark_20k", "spark_30k")) for key in figures)
    assert "spark_driver_memory_growth_20k_to_30k" not in figures
    for phase in ("features", "training"):
        assert figures[f"pandas_{phase}_time_growth_20k_to_30k"] > 0


@pytest.mark.slow  # a Spark session of its own in a fresh process: about 2 minutes
def test_scale_benchmark_measures_spark_driver_jvm_and_workers_apart(tmp_path):
    require_spark()
    out = tmp_path / "scale.json"
    result = _scale("--engines", "spark", "--sizes", "20000", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    _peaks_and_rates(figures, "spark_20k", ("driver_python", "driver_jvm", "python_workers"))
    assert figures["spark_20k_all_driver_jvm_peak_gb"] > 0.1  # the JVM was found and sampled
    assert figures["spark_20k_training_python_workers_peak_gb"] > 0  # XGBoost ran in workers
    assert figures["spark_20k_all_driver_peak_gb"] >= figures["spark_20k_all_driver_jvm_peak_gb"]
    assert figures["spark_20k_spark_master"] == "local[2]"


def test_scale_benchmark_refuses_an_unknown_engine(tmp_path):
    result = _scale("--engines", "dask", cwd=tmp_path)
    assert result.returncode == 2
    assert "expected a comma-separated list of pandas, spark, got 'dask'" in result.stderr
    assert "Traceback" not in result.stderr
