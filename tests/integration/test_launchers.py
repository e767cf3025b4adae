"""Every way of launching the project, each run to a registered champion that scores:

- `mlflow run . --env-manager uv`: a fresh environment built from python_env.yaml;
- `mlflow run <git URL> -v <commit>`: fetched by MLflow into a temporary folder, that commit
  checked out, and the commit recorded on every run and on the model version;
- `mlflow run file://<clone> -v <commit>`: MLflow checks the commit out in that clone;
- the root scripts run directly, `python train.py`, `python evaluate.py`, `python register.py`.

`mlflow run . --env-manager local` itself runs in test_backends.py and test_end_to_end.py.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.support import SMALL_RUN
from tests.support.processes import (
    EXPERIMENT,
    PIPELINE_STEPS,
    assert_champion_scores,
    assert_pipeline_finished,
    assert_succeeded,
    copy_project,
    mlflow_environment,
    mlflow_run,
    pipeline_runs,
    run_command,
    writing_bytecode,
)
from tests.support.services import git, git_daemon

pytestmark = pytest.mark.slow

PROJECT_RUNS = ("main", *PIPELINE_STEPS)


def _store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_uv_builds_a_fresh_environment_from_python_env(tmp_path: Path, uv_available) -> None:
    project = copy_project(tmp_path / "project")
    environments = tmp_path / "envs"
    env = writing_bytecode(
        mlflow_environment(
            _store(tmp_path),
            MLFLOW_ENV_ROOT=str(environments),
            # Use an installed Python 3.11; never download one.
            UV_PYTHON_DOWNLOADS="never",
        )
    )
    try:
        result = mlflow_run(
            ".", env, "--experiment-name", EXPERIMENT, env_manager="uv", cwd=project, **SMALL_RUN
        )
        assert_succeeded(result)
        (environment,) = environments.iterdir()  # one environment, shared by all four runs
        assert (environment / "bin" / "python").exists()
    finally:
        shutil.rmtree(environments, ignore_errors=True)  # about 850 MB

    client = MlflowClient(tracking_uri=_store(tmp_path))
    steps = assert_pipeline_finished(client)
    for step in PROJECT_RUNS:
        assert steps[step].data.tags["mlflow.project.env"] == "uv", step
    assert_champion_scores(_store(tmp_path))


def _repository(tmp_path: Path) -> tuple[Path, str]:
    """A git repository of the project whose requested commit is not its newest: the commit
    after it breaks `main`, so running anything but the requested commit fails."""
    work = copy_project(tmp_path / "work")
    git("init", "--quiet", "--initial-branch", "main", cwd=work)
    git("add", ".", cwd=work)
    git("commit", "--quiet", "-m", "the project", cwd=work)
    commit = git("rev-parse", "HEAD", cwd=work)
    main = work / "main.py"
    main.write_text('raise SystemExit("not the requested commit")\n' + main.read_text())
    git("commit", "--quiet", "-am", "a newer commit that must not run", cwd=work)
    return work, commit


def _assert_commit_recorded(client: MlflowClient, commit: str) -> None:
    steps = assert_pipeline_finished(client)
    for step in PROJECT_RUNS:
        assert steps[step].data.tags["mlflow.source.git.commit"] == commit, step
    champion = client.get_model_version_by_alias("fraud-detector", "champion")
    assert champion.tags["fraud.git_commit"] == commit


def test_git_url_runs_the_requested_commit_in_a_temporary_folder(tmp_path: Path) -> None:
    work, commit = _repository(tmp_path)
    served = tmp_path / "served"
    served.mkdir()
    git("clone", "--quiet", "--bare", str(work), str(served / "project.git"), cwd=tmp_path)
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    # MLflow fetches a git URL into tempfile.mkdtemp(): under TMPDIR, here inside tmp_path.
    env = mlflow_environment(_store(tmp_path), TMPDIR=str(fetched))

    with git_daemon(served) as base_url:
        url = f"{base_url}/project.git"
        result = mlflow_run(
            url, env, "-v", commit, "--experiment-name", EXPERIMENT, cwd=tmp_path, **SMALL_RUN
        )
    assert_succeeded(result)

    checkouts = [path for path in fetched.iterdir() if (path / "MLproject").exists()]
    assert len(checkouts) == 1, list(fetched.iterdir())
    assert git("rev-parse", "HEAD", cwd=checkouts[0]) == commit
    client = MlflowClient(tracking_uri=_store(tmp_path))
    _assert_commit_recorded(client, commit)
    main = assert_pipeline_finished(client)["main"]
    assert main.data.tags["mlflow.source.name"] == url
    assert_champion_scores(_store(tmp_path))


def test_file_uri_of_a_clone_runs_the_requested_commit_in_place(tmp_path: Path) -> None:
    work, commit = _repository(tmp_path)
    clone = tmp_path / "clone"
    git("clone", "--quiet", str(work), str(clone), cwd=tmp_path)
    env = mlflow_environment(_store(tmp_path))
    # One step is enough here: the git URL test above follows a commit to the model version.
    step = {key: value for key, value in SMALL_RUN.items() if not key.startswith("min_")}

    result = mlflow_run(
        clone.as_uri(),
        env,
        *("-v", commit, "-e", "train", "--experiment-name", EXPERIMENT),
        cwd=tmp_path,
        model_kinds="xgboost",
        **step,
    )
    assert_succeeded(result)

    # A file:// URI of an existing folder is not copied: MLflow checks the commit out there
    # (detached HEAD) after a `git fetch --depth 1`, which leaves the clone shallow (README).
    assert git("rev-parse", "HEAD", cwd=clone) == commit
    assert git("rev-parse", "--is-shallow-repository", cwd=clone) == "true"
    train = pipeline_runs(MlflowClient(tracking_uri=_store(tmp_path)))["train"]
    assert train.info.status == "FINISHED"
    assert train.data.tags["mlflow.source.git.commit"] == commit


def _flags(**values: str) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key.replace('_', '-')}", value)]


def test_root_scripts_run_directly(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    env = mlflow_environment(_store(tmp_path))
    gate = {key: value for key, value in SMALL_RUN.items() if key.startswith("min_")}
    data_and_model = {key: value for key, value in SMALL_RUN.items() if key not in gate}
    commands = [
        ["train.py", *_flags(**data_and_model)],
        ["evaluate.py", *_flags(**gate)],  # the latest train run
        ["register.py"],  # the latest evaluate run
    ]
    for command in commands:
        assert_succeeded(run_command([sys.executable, *command], env, cwd=project))

    client = MlflowClient(tracking_uri=_store(tmp_path))
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    finished = {run.data.tags.get("fraud.step") for run in runs if run.info.status == "FINISHED"}
    assert set(PIPELINE_STEPS) <= finished
    assert_champion_scores(_store(tmp_path))
