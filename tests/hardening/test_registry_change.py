"""Register, approve and roll back are all or nothing: a failure at any write of the change.

For each action, the test first counts the writes the action makes to the tracking store when
nothing fails, then runs it again on a fresh copy of the same store once per write, making that
write fail as a dead server does. Each time the action must end in one of two states:

- done and recorded: exit 0, the aliases moved, the decision on the version and in the run's
  ``decision.json``, the run FINISHED; or
- not done: exit 1, the aliases where they were, no version the action created, the version
  tags as they were, no promotion lock left, the run FAILED with the reason in ``fraud.error``.

"Transient": only that one write fails (the undo can run at once). "Persistent": that write and
every later one fail until the server is "back", then ``recovery`` repairs what the step noted.
The failure is injected into ``MlflowClient``'s write methods: the integration layer cuts real
stores (tests/integration/test_store_faults.py); here every single write is reached.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fraud_detection.cli import (
    EXIT_FAILED,
    EXIT_OK,
    main_with_exit_code,
)
from fraud_detection.config import (
    EvaluateConfig,
    RegisterConfig,
)
from fraud_detection.hardening import registry_change
from fraud_detection.hardening.recovery import repair_remembered
from fraud_detection.hardening.spool import STATE_DIR_VARIABLE
from fraud_detection.steps.evaluate import evaluate
from fraud_detection.steps.register import register
from tests.support.pipeline import LENIENT_GATE, latest_run, private_store, train_small

MODEL = "fraud-detector"
# Every MlflowClient method through which the register step (and MLflow's fluent API under it)
# writes to the tracking store or the registry.
WRITES = (
    "create_registered_model",
    "delete_registered_model",
    "_create_model_version",
    "delete_model_version",
    "set_model_version_tag",
    "delete_model_version_tag",
    "set_registered_model_alias",
    "delete_registered_model_alias",
    "set_tag",
    "log_batch",
    "log_param",
    "log_dict",
    "log_artifact",
    "set_terminated",
)
DEAD_SERVER = (
    "API request to http://127.0.0.1:9/api/2.0/mlflow/{method} failed with exception "
    "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
    "/api/2.0/mlflow/{method} (Caused by NewConnectionError('Failed to establish a new "
    "connection: [Errno 111] Connection refused'))"
)


class Faults:
    """Counts the writes through ``MlflowClient``; makes the ``fail_at``-th fail (and, when
    ``persistent``, every one after it until ``restore``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.fail_at: int | None = None
        self.persistent = False
        self.failed: list[str] = []
        for name in WRITES:
            original = getattr(MlflowClient, name)
            monkeypatch.setattr(MlflowClient, name, self._wrap(name, original))

    def _wrap(self, name: str, original: Callable) -> Callable:
        def write(client, *args, **kwargs):
            # MLflow's fluent calls nest (log_dict -> log_artifact): count the outer one only.
            if getattr(self, "_inside", False):
                return original(client, *args, **kwargs)
            self.count += 1
            down = self.fail_at is not None and (
                self.count == self.fail_at or (self.persistent and self.count > self.fail_at)
            )
            if down:
                self.failed.append(name)
                raise MlflowException(DEAD_SERVER.format(method=name.strip("_")))
            self._inside = True
            try:
                return original(client, *args, **kwargs)
            finally:
                self._inside = False

        return write

    def arm(self, fail_at: int, persistent: bool) -> None:
        self.count, self.fail_at, self.persistent, self.failed = 0, fail_at, persistent, []

    def restore(self) -> None:
        self.fail_at = None


@dataclass(frozen=True)
class Registry:
    """What the registry looks like: aliases, versions and their tags, registered models."""

    aliases: dict[str, str]
    versions: dict[str, dict[str, str]]
    models: tuple[str, ...]

    @classmethod
    def now(cls) -> Registry:
        client = MlflowClient()
        models = tuple(sorted(model.name for model in client.search_registered_models()))
        if MODEL not in models:
            return cls({}, {}, models)
        aliases = {a: str(v) for a, v in client.get_registered_model(MODEL).aliases.items()}
        versions = {
            str(v.version): dict(v.tags) for v in client.search_model_versions(f"name = '{MODEL}'")
        }
        return cls(aliases, versions, models)


@dataclass(frozen=True)
class Scenario:
    """A store to copy, the register command to run on it, and what "done" looks like."""

    database: Path
    argv: list[str]
    check_done: Callable[[Registry, Registry], None]


def _registered(before: Registry, after: Registry) -> None:
    new = set(after.versions) - set(before.versions)
    assert len(new) == 1, (before, after)
    version = new.pop()
    assert after.aliases["challenger"] == version
    assert after.aliases["champion"] == version
    assert after.versions[version]["fraud.decision"] == "promoted"
    if "champion" in before.aliases:
        assert after.versions[version]["fraud.previous_champion"] == before.aliases["champion"]


def _approved(before: Registry, after: Registry) -> None:
    assert after.aliases["champion"] == "2" != before.aliases.get("champion")
    assert after.versions["2"]["fraud.decision"] == "promoted"
    assert after.versions["2"]["fraud.approved_why"] == "reviewed"


def _rolled_back(before: Registry, after: Registry) -> None:
    assert before.aliases["champion"] == "2" and after.aliases["champion"] == "1"
    assert after.versions["2"]["fraud.rolled_back_why"] == "alerts doubled"
    assert "fraud.restored_at" in after.versions["1"]


def _evaluate(**changes) -> str:
    evaluate(EvaluateConfig(run_id=train_small(**changes), gate=LENIENT_GATE))
    return latest_run("evaluate").info.run_id


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory, migrated_store: Path) -> dict:
    """Stores ready for each action (about 15 s of training, once)."""
    built: dict[str, Scenario] = {}
    with private_store(tmp_path_factory.mktemp("first"), migrated_store) as database:
        evaluation = _evaluate()
        built["first registration"] = Scenario(database, ["--run-id", evaluation], _registered)
    with private_store(tmp_path_factory.mktemp("second"), migrated_store) as database:
        register(RegisterConfig(run_id=_evaluate()))
        evaluation = _evaluate()  # the same model again: no worse, so it replaces version 1
        shutil.copy(database, database.with_name("replace.db"))
        built["replacing the champion"] = Scenario(
            database.with_name("replace.db"), ["--run-id", evaluation], _registered
        )
        register(RegisterConfig(run_id=evaluation, require_approval=True))
        shutil.copy(database, database.with_name("approve.db"))
        built["approval"] = Scenario(
            database.with_name("approve.db"),
            ["--approve-version", "2", "--reason", "reviewed"],
            _approved,
        )
        register(RegisterConfig(approve_version="2", reason="first review"))
        built["rollback"] = Scenario(
            database, ["--rollback", "--reason", "alerts doubled"], _rolled_back
        )
    return built


def _run(scenario: Scenario, tmp_path: Path, faults: Faults, fail_at: int, persistent: bool):
    database = tmp_path / f"store-{fail_at}-{persistent}.db"
    shutil.copy(scenario.database, database)
    mlflow.set_tracking_uri(f"sqlite:///{database}")
    before = Registry.now()
    faults.arm(fail_at, persistent)
    code = main_with_exit_code(RegisterConfig, register, scenario.argv, "register")
    faults.restore()
    if persistent:
        repair_remembered()  # the server is back: the next step, or recovery, repairs
    return code, before, Registry.now()


@pytest.mark.parametrize(
    "action", ["first registration", "replacing the champion", "approval", "rollback"]
)
@pytest.mark.parametrize(
    "persistent",
    # The persistent variant doubles the time (about 45 s more): it runs in the slow layer.
    [False, pytest.param(True, marks=pytest.mark.slow)],
    ids=["transient", "persistent"],
)
def test_a_failure_at_any_write_leaves_the_change_done_or_not_done(
    action, persistent, scenarios, tmp_path, monkeypatch, tracking_uri
):
    monkeypatch.setenv(STATE_DIR_VARIABLE, str(tmp_path / "state"))
    monkeypatch.setattr(registry_change, "LOCK_WAIT_SECONDS", 0.0)
    scenario = scenarios[action]
    faults = Faults(monkeypatch)

    code, before, after = _run(scenario, tmp_path, faults, fail_at=0, persistent=False)
    assert code == EXIT_OK
    scenario.check_done(before, after)
    writes = faults.count
    assert writes >= 5, writes

    outcomes = []
    for fail_at in range(1, writes + 1):
        code, before, after = _run(scenario, tmp_path, faults, fail_at, persistent)
        run = latest_run("register")
        outcomes.append((fail_at, faults.failed[:1], code))
        if code == EXIT_OK:
            scenario.check_done(before, after)
            assert run.info.status == "FINISHED"
            continue
        assert code == EXIT_FAILED, (fail_at, faults.failed)
        assert after == before, (fail_at, faults.failed)
        assert run.info.status == "FAILED", (fail_at, faults.failed)
        assert "did not answer" in run.data.tags["fraud.error"], (fail_at, faults.failed)
    # Every write but the last few is part of the change: a failure there undoes it.
    assert sum(code == EXIT_FAILED for _, _, code in outcomes) >= writes - 2, outcomes


class _BasicAuthRegistry:
    """Answers alias lookups as MLflow 3.17's basic-auth server does: 403, not 404, when the
    registered model itself does not exist."""

    def __init__(self, models: dict[str, dict[str, str]]) -> None:
        self.models = models  # name -> {alias: version}

    def get_registered_model(self, name: str) -> str:
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

        if name not in self.models:
            raise MlflowException(f"Registered Model {name} not found", RESOURCE_DOES_NOT_EXIST)
        return name

    def get_model_version_by_alias(self, name: str, alias: str):
        from mlflow.entities.model_registry import ModelVersion
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, PERMISSION_DENIED

        if name not in self.models:
            raise MlflowException("Permission denied", PERMISSION_DENIED)
        if alias not in self.models[name]:
            raise MlflowException(f"alias {alias} not found", INVALID_PARAMETER_VALUE)
        return ModelVersion(name, self.models[name][alias], creation_timestamp=0)


def test_no_champion_behind_basic_auth_is_told_from_a_refusal():
    """No registered model yet: no champion. A 403 on a model that exists stays an error."""
    registry = _BasicAuthRegistry({"fraud-detector": {"champion": "3"}})
    assert registry_change.alias_version(registry, "new-model", "champion") is None
    assert registry_change.alias_version(registry, "fraud-detector", "challenger") is None
    assert registry_change.alias_version(registry, "fraud-detector", "champion") == "3"
    registry.get_registered_model = lambda name: name  # exists, yet the lookup is refused
    with pytest.raises(MlflowException, match="Permission denied"):
        registry_change.version_by_alias(registry, "new-model", "champion")
