"""python_env.yaml, conda.yaml and pyproject.toml must pin the same runtime dependencies, with
the same environment markers; XGBoost comes from exactly one distribution on every platform."""

import importlib.metadata
import tomllib

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement

from fraud_detection.modelling.pyfunc import (
    XGBOOST_CPU,
    XGBOOST_CPU_PLATFORMS,
    XGBOOST_OTHER_PLATFORMS,
    installed_xgboost,
    model_requirements,
    xgboost_version,
)
from tests.support import PROJECT_DIR

# sys_platform of Linux, Windows, macOS, and two where neither XGBoost distribution has a wheel.
PLATFORMS = ("linux", "win32", "darwin", "cygwin", "freebsd14")


def _name(requirement: Requirement) -> str:
    return requirement.name.lower().replace("_", "-")


def _normalised(requirements: list[str]) -> dict[str, tuple[str, str]]:
    """Each requirement's name -> (version specifier, environment marker or "")."""
    parsed = [Requirement(text) for text in requirements]
    normalised = {_name(req): (str(req.specifier), str(req.marker or "")) for req in parsed}
    assert len(normalised) == len(parsed), "a package is named twice"
    return normalised


def _python_env() -> dict:
    return yaml.safe_load((PROJECT_DIR / "python_env.yaml").read_text())


def _conda_pip() -> list[str]:
    conda = yaml.safe_load((PROJECT_DIR / "conda.yaml").read_text())
    pip_sections = [item["pip"] for item in conda["dependencies"] if isinstance(item, dict)]
    assert len(pip_sections) == 1
    return pip_sections[0]


def _pyproject() -> dict:
    return tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())


def _applies(marker: str, platform: str) -> bool:
    return not marker or Marker(marker).evaluate({"sys_platform": platform})


def test_python_env_and_conda_pin_the_same_packages():
    assert _normalised(_python_env()["dependencies"]) == _normalised(_conda_pip())


def test_environments_match_the_install_metadata():
    assert _normalised(_python_env()["dependencies"]) == _normalised(
        _pyproject()["project"]["dependencies"]
    )


def test_same_python_everywhere():
    conda = yaml.safe_load((PROJECT_DIR / "conda.yaml").read_text())
    assert str(_python_env()["python"]) == "3.11"
    assert "python=3.11" in conda["dependencies"]
    assert _pyproject()["project"]["requires-python"] == ">=3.11"


def test_every_dependency_is_pinned_to_a_range():
    for name, (specifier, _) in _normalised(_python_env()["dependencies"]).items():
        assert "<" in specifier and ">=" in specifier, name


def test_xgboost_comes_from_exactly_one_distribution_on_every_platform():
    # xgboost and xgboost-cpu install the same `xgboost` module: one of them, never both.
    pins = _normalised(_python_env()["dependencies"])
    assert pins["xgboost"][0] == pins[XGBOOST_CPU][0]
    assert pins[XGBOOST_CPU][1] == str(Marker(XGBOOST_CPU_PLATFORMS))
    assert pins["xgboost"][1] == str(Marker(XGBOOST_OTHER_PLATFORMS))
    for platform in PLATFORMS:
        chosen = [name for name in ("xgboost", XGBOOST_CPU) if _applies(pins[name][1], platform)]
        assert len(chosen) == 1, (platform, chosen)
    assert _applies(pins[XGBOOST_CPU][1], "linux")
    assert _applies(pins["xgboost"][1], "darwin")  # no xgboost-cpu wheel for macOS
    # Every other package applies everywhere.
    assert [name for name, (_, marker) in pins.items() if marker] == [XGBOOST_CPU, "xgboost"]


def test_installed_xgboost_is_the_distribution_this_platform_asks_for():
    pins = _normalised(_python_env()["dependencies"])
    wanted = next(name for name in (XGBOOST_CPU, "xgboost") if Marker(pins[name][1]).evaluate())
    installed = list(installed_xgboost())
    # Both installed: an environment made before xgboost-cpu, upgraded in place.
    assert installed == [wanted], (
        f"installed {installed}; this platform asks for {wanted} (README, Quick start: "
        "pip uninstall -y xgboost xgboost-cpu nvidia-nccl-cu12 && pip install -e '.[dev]')"
    )


def test_both_distributions_installed_pins_the_module_and_says_how_to_fix(monkeypatch, caplog):
    import xgboost

    both = {XGBOOST_CPU: "3.2.0", "xgboost": "3.0.0"}
    monkeypatch.setattr("fraud_detection.modelling.pyfunc.installed_xgboost", lambda: both)
    assert xgboost_version() == xgboost.__version__
    assert "pip uninstall -y xgboost xgboost-cpu nvidia-nccl-cu12" in caplog.text


@pytest.mark.parametrize("kind", ["xgboost", "logistic_regression"])
def test_model_requirements_install_anywhere_and_hold_here(kind):
    requirements = [Requirement(text) for text in model_requirements(kind)]
    assert all(
        len(req.specifier) == 1 and str(req.specifier).startswith("==") for req in requirements
    )
    xgboost = [req for req in requirements if _name(req) in ("xgboost", XGBOOST_CPU)]
    assert len(xgboost) == 2 and xgboost[0].specifier == xgboost[1].specifier
    for platform in PLATFORMS:
        chosen = [req.name for req in xgboost if _applies(str(req.marker), platform)]
        assert len(chosen) == 1, (platform, chosen)
    # This environment satisfies every requirement meant for it: the model loads here as is.
    for req in requirements:
        if req.marker is None or req.marker.evaluate():
            assert req.specifier.contains(importlib.metadata.version(req.name)), req


def test_mlflow_pin_excludes_the_broken_release():
    # 3.18.0 is listed on PyPI but cannot be installed (its mlflow-skinny is missing).
    specifier = Requirement(
        next(r for r in _python_env()["dependencies"] if r.startswith("mlflow"))
    ).specifier
    assert "3.17.2" in specifier
    assert "3.18.0" not in specifier
