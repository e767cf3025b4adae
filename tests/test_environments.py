"""python_env.yaml, conda.yaml and pyproject.toml must pin the same runtime dependencies."""

import tomllib

import yaml
from packaging.requirements import Requirement

from tests.support import PROJECT_DIR


def _normalised(requirements: list[str]) -> dict[str, str]:
    parsed = [Requirement(text) for text in requirements]
    return {req.name.lower().replace("_", "-"): str(req.specifier) for req in parsed}


def _python_env() -> dict:
    return yaml.safe_load((PROJECT_DIR / "python_env.yaml").read_text())


def _conda_pip() -> list[str]:
    conda = yaml.safe_load((PROJECT_DIR / "conda.yaml").read_text())
    pip_sections = [item["pip"] for item in conda["dependencies"] if isinstance(item, dict)]
    assert len(pip_sections) == 1
    return pip_sections[0]


def _pyproject() -> dict:
    return tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())


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
    for name, specifier in _normalised(_python_env()["dependencies"]).items():
        assert "<" in specifier and ">=" in specifier, name


def test_mlflow_pin_excludes_the_broken_release():
    # 3.18.0 is listed on PyPI but cannot be installed (its mlflow-skinny is missing).
    specifier = Requirement(
        next(r for r in _python_env()["dependencies"] if r.startswith("mlflow"))
    ).specifier
    assert "3.17.2" in specifier
    assert "3.18.0" not in specifier
