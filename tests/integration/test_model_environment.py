"""A logged model's own environment, built from its pinned requirements:

- `mlflow models serve --env-manager uv` builds it (XGBoost's CPU build on Linux, no CUDA) and
  answers what this environment computes;
- the project's and the model's requirements resolve to exactly one XGBoost distribution, and
  no CUDA package, on Linux, Windows and macOS (uv resolves for each platform from PyPI).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from packaging.requirements import Requirement

from fraud_detection.data.features import (
    FEATURE_COLUMNS,
    add_features,
)
from fraud_detection.modelling.pyfunc import (
    PROBABILITY_COLUMN,
    XGBOOST_CPU,
)
from tests.support import PROJECT_DIR
from tests.support.pipeline import MODEL_NAME, TwoVersionStore, tiny_simulation
from tests.support.processes import (
    assert_succeeded,
    background_process,
    free_port,
    http_ok,
    mlflow_environment,
    post_json,
    run_command,
    writing_bytecode,
)

pytestmark = pytest.mark.slow

# Version 2 of the two-version store is an XGBoost model.
XGBOOST_MODEL = f"models:/{MODEL_NAME}@challenger"
# uv's names of the platforms, and the XGBoost distribution each installs.
PLATFORMS = {
    "x86_64-manylinux_2_28": XGBOOST_CPU,
    "aarch64-manylinux_2_28": XGBOOST_CPU,
    "x86_64-pc-windows-msvc": XGBOOST_CPU,
    "aarch64-apple-darwin": "xgboost",
    "x86_64-apple-darwin": "xgboost",
}


@pytest.fixture
def store(two_version_store: TwoVersionStore, tmp_path: Path) -> str:
    database = tmp_path / "mlflow.db"
    shutil.copy(two_version_store.database, database)
    return f"sqlite:///{database}"


def _uv() -> str:
    found = shutil.which("uv", path=mlflow_environment(None)["PATH"])
    assert found is not None
    return found


def test_mlflow_models_serve_with_uv_installs_the_cpu_build_and_scores(
    store: str, tmp_path: Path, uv_available
) -> None:
    rows = add_features(tiny_simulation(seed=5, n_days=35))[list(FEATURE_COLUMNS)].tail(20)
    mlflow.set_tracking_uri(store)
    try:
        expected = mlflow.pyfunc.load_model(XGBOOST_MODEL).predict(rows)
    finally:
        mlflow.set_tracking_uri(None)

    environments = tmp_path / "envs"
    env = writing_bytecode(
        mlflow_environment(store, MLFLOW_ENV_ROOT=str(environments), UV_PYTHON_DOWNLOADS="never")
    )
    port = free_port()
    command = [
        *(sys.executable, "-m", "mlflow", "models", "serve", "-m", XGBOOST_MODEL),
        *("--env-manager", "uv", "-h", "127.0.0.1", "-p", str(port), "-w", "1"),
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        with background_process(command, tmp_path / "serve.log", env=env) as server:
            # Building the environment: seconds from uv's cache, minutes without it.
            server.wait_until(lambda: http_ok(f"{base}/ping"), 600, "mlflow models serve (uv)")
            status, body = post_json(
                f"{base}/invocations", {"dataframe_split": rows.to_dict(orient="split")}
            )
        assert status == 200, body
        served = [row[PROBABILITY_COLUMN] for row in body["predictions"]]
        np.testing.assert_allclose(served, expected[PROBABILITY_COLUMN], rtol=1e-6)

        (environment,) = environments.glob("*/bin/python")
        listing = run_command(
            [
                str(environment),
                "-c",
                "import importlib.metadata as m, json; "
                "print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))",
            ],
            env,
        )
        assert_succeeded(listing)
        installed = json.loads(listing.stdout)
        assert XGBOOST_CPU in installed
        assert "xgboost" not in installed
        assert not [name for name in installed if name.startswith("nvidia")]
    finally:
        shutil.rmtree(environments, ignore_errors=True)


def _resolve(requirements: Path, platform: str) -> dict[str, str]:
    """What `uv pip compile` pins for ``requirements`` on ``platform``, Python 3.11, wheels only
    for XGBoost (its source distributions need a compiler and CMake)."""
    result = subprocess.run(
        [
            *(_uv(), "pip", "compile", str(requirements), "--quiet", "--no-header"),
            *("--python-platform", platform, "--python-version", "3.11"),
            *("--only-binary", "xgboost", "--only-binary", XGBOOST_CPU),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=mlflow_environment(None, UV_PYTHON_DOWNLOADS="never"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pins = [Requirement(line) for line in result.stdout.splitlines() if "==" in line]
    return {pin.name.lower(): str(pin.specifier) for pin in pins}


def _model_requirements(store: str, destination: Path) -> Path:
    """The logged model's requirements.txt, downloaded with the model into ``destination``."""
    mlflow.set_tracking_uri(store)
    try:
        model = mlflow.artifacts.download_artifacts(XGBOOST_MODEL, dst_path=str(destination))
    finally:
        mlflow.set_tracking_uri(None)
    return Path(model) / "requirements.txt"


@pytest.mark.parametrize("platform", PLATFORMS)
def test_one_xgboost_and_no_cuda_on_every_platform(
    platform: str, store: str, tmp_path: Path, uv_available
) -> None:
    model_requirements = _model_requirements(store, tmp_path / "model")
    trained = {
        str(Requirement(line).specifier)
        for line in model_requirements.read_text().splitlines()
        if line.startswith("xgboost")
    }
    assert len(trained) == 1, trained  # both distributions at the version that trained it
    for requirements in (PROJECT_DIR / "pyproject.toml", model_requirements):
        pins = _resolve(requirements, platform)
        chosen = [name for name in ("xgboost", XGBOOST_CPU) if name in pins]
        assert chosen == [PLATFORMS[platform]], (requirements.name, pins)
        assert not [name for name in pins if name.startswith("nvidia")], (requirements.name, pins)
    assert {pins[PLATFORMS[platform]]} == trained  # the model's: the version that trained it
