"""The files around the code stay true: the CI workflow and Compose file against their schemas,
the pre-commit config, the Makefile, the server scripts' checks, the screenshot script's check
for Chromium, the forking guide's table and its FIXME grep line, and the server packages that
pyproject and the Compose file both name.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib

import mlflow.environment_variables
import pytest
import yaml
from packaging.requirements import Requirement

from tests.support import PROJECT_DIR

FORKING = (PROJECT_DIR / "docs" / "forking.md").read_text()
# Built, so that this file is not one of the places the marker grep finds.
FORK_MARKER = "FIXME" + "(fork):"


def _run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize(
    ("path", "schemas"),
    [
        (
            ".github/workflows/ci.yml",
            ("vendor.github-workflows", "custom.github-workflows-require-timeout"),
        ),
        (
            ".github/workflows/monitor.yml",
            ("vendor.github-workflows", "custom.github-workflows-require-timeout"),
        ),
        ("docker-compose.yml", ("vendor.compose-spec",)),
    ],
)
def test_file_matches_its_published_schema(path, schemas):
    # check-jsonschema ships these schemas (SchemaStore's, the Compose spec): no network needed.
    for schema in schemas:
        result = _run(sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_runs_lint_and_both_test_layers():
    workflow = yaml.safe_load((PROJECT_DIR / ".github/workflows/ci.yml").read_text())
    commands = [
        step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step
    ]
    for expected in ("ruff check .", "ruff format --check .", "pytest", "pytest -m slow"):
        assert any(
            command == expected or command.startswith(expected + " -") for command in commands
        ), expected


def test_pre_commit_config_is_valid():
    result = _run(sys.executable, "-m", "pre_commit", "validate-config", ".pre-commit-config.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    hooks = {
        hook["id"]
        for repo in yaml.safe_load((PROJECT_DIR / ".pre-commit-config.yaml").read_text())["repos"]
        for hook in repo["hooks"]
    }
    assert {"ruff-check", "ruff-format", "check-github-workflows"} <= hooks


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_targets_run_the_readme_commands():
    targets = {"test": "pytest", "test-integration": "pytest -m slow", "run": "mlflow run ."}
    for target, command in targets.items():
        result = _run("make", "--dry-run", target)
        assert result.returncode == 0, result.stderr
        assert command in result.stdout, (target, result.stdout)
    help_text = _run("make").stdout
    declared = re.findall(r"^([a-z-]+):", (PROJECT_DIR / "Makefile").read_text(), re.MULTILINE)
    for target in declared:
        assert re.search(rf"^  {target} ", help_text, re.MULTILINE), f"{target} has no ## line"


def test_production_server_refuses_to_start_without_its_settings():
    # Only the variable named in the message is missing; nothing is started.
    settings = {
        "PATH": "/usr/bin:/bin",
        "MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg://u:p@127.0.0.1:1/mlflow",
        "MLFLOW_AUTH_DATABASE_URI": "postgresql+psycopg://u:p@127.0.0.1:1/auth",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "key",
        "MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow.example.com",
    }
    for name in settings.keys() - {"PATH"}:
        env = {key: value for key, value in settings.items() if key != name}
        result = _run("bash", "deploy/production-server.sh", env=env)
        assert result.returncode != 0
        assert name in result.stderr, (name, result.stderr)
    result = _run("bash", "deploy/production-server.sh", env=settings)  # no artifact store
    assert result.returncode == 2
    assert "MLFLOW_ARTIFACTS_DESTINATION" in result.stderr


def test_fork_table_names_only_real_parameters_and_variables():
    start = FORKING.index("| to change | set |")
    table = "\n".join(line for line in FORKING[start:].splitlines()[:20] if line.startswith("|"))
    parameters = set(re.findall(r"-P ([a-z_0-9]+)=", table))
    mlproject = yaml.safe_load((PROJECT_DIR / "MLproject").read_text())
    assert parameters, "no parameter found in the fork table"
    assert parameters <= set(mlproject["entry_points"]["main"]["parameters"])
    variables = set(re.findall(r"`(MLFLOW_[A-Z_]+)`", table))
    assert variables, "no variable found in the fork table"
    for name in variables:
        assert hasattr(mlflow.environment_variables, name), name


def test_the_guides_grep_line_finds_every_fork_marker():
    command = re.search(r'`(git grep -n "FIXME[^`]*)`', FORKING).group(1)
    if _run("git", "rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout")
    tracked = _run("git", "ls-files").stdout.split()
    expected = set()
    for name in tracked:
        path = PROJECT_DIR / name
        if path.is_file():
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if FORK_MARKER in line:
                    assert line.split(FORK_MARKER, 1)[1].strip(), f"{name}:{number} says nothing"
                    expected.add(f"{name}:{number}")
    found = _run("bash", "-c", command).stdout.splitlines()
    assert {":".join(line.split(":")[:2]) for line in found} == expected
    assert len(expected) >= 3


def _server_extra() -> set[str]:
    extras = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def expand(name: str) -> set[str]:
        requirements = set()
        for text in extras[name]:
            requirement = Requirement(text)
            if requirement.name == "fraud-detection-template":
                for extra in requirement.extras:
                    requirements |= expand(extra)
            else:
                requirements.add(text)
        return requirements

    return expand("server")


def test_compose_image_installs_the_server_extra():
    compose = yaml.safe_load((PROJECT_DIR / "docker-compose.yml").read_text())
    dockerfile = compose["services"]["mlflow"]["build"]["dockerfile_inline"]
    installed = set(
        re.findall(r'"([^"]+)"', next(line for line in dockerfile.splitlines() if "pip" in line))
    )
    assert installed == _server_extra()


def test_screenshot_script_names_the_install_command_when_chromium_is_missing(tmp_path):
    # Checked before anything is started: nothing is run, nothing is written.
    out = tmp_path / "images"
    result = _run(
        sys.executable,
        "docs/screenshots/take.py",
        "--out",
        str(out),
        env={**os.environ, "PATH": str(tmp_path)},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "apt-get install chromium" in result.stderr
    assert not out.exists()
