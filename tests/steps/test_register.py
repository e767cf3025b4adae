"""The register step: versions, aliases, gate decisions, approval and rollback."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from fraud_detection.cli import (
    EXIT_BAD_PARAMETERS,
    EXIT_FAILED,
    main_with_exit_code,
)
from fraud_detection.config import (
    ConfigError,
    RegisterConfig,
)
from fraud_detection.errors import PromotionConflictError
from fraud_detection.hardening.registry_change import RegistryChange
from fraud_detection.steps.register import (
    AWAITING_APPROVAL,
    NOT_PROMOTED,
    PROMOTED,
    decide_promotion,
    register,
)
from tests.support.pipeline import evaluate_and_register, latest_run, train_small

MODEL = "fraud-detector"


def _alias(alias: str) -> str:
    return str(MlflowClient().get_model_version_by_alias(MODEL, alias).version)


@pytest.mark.parametrize(
    ("gate", "compared", "current", "approval", "label"),
    [
        (True, None, None, False, PROMOTED),
        (True, "1", "1", False, PROMOTED),
        (False, None, None, False, NOT_PROMOTED),
        (True, "1", "2", False, NOT_PROMOTED),  # the champion moved since evaluation
        (True, None, "1", False, NOT_PROMOTED),  # a champion appeared since evaluation
        (True, "1", "1", True, AWAITING_APPROVAL),
        (False, "1", "1", True, NOT_PROMOTED),
    ],
)
def test_decide_promotion(gate, compared, current, approval, label):
    assert decide_promotion(gate, "report", compared, current, approval).label == label


def test_register_promotes_and_tags_the_version(experiment):
    client = MlflowClient()
    train_run_id = train_small()
    evaluate_run_id, register_run_id = evaluate_and_register(train_run_id)
    assert _alias("champion") == _alias("challenger") == "1"
    version = client.get_model_version(MODEL, "1")
    tags = version.tags
    assert tags["fraud.train_run_id"] == train_run_id
    assert tags["fraud.evaluate_run_id"] == evaluate_run_id
    assert tags["fraud.decision"] == PROMOTED
    assert tags["fraud.gate"] == "passed"
    assert tags["fraud.compared_champion"] == "none"
    assert len(tags["fraud.data_fingerprint"]) == 16
    assert "fraud.git_commit" in tags and "fraud.test_roc_auc" in tags
    decision = mlflow.artifacts.load_dict(f"runs:/{register_run_id}/decision.json")
    assert decision["label"] == PROMOTED and decision["version"] == "1"

    # Registering the same evaluation again reuses the version.
    register(RegisterConfig(run_id=evaluate_run_id))
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1
    assert _alias("champion") == "1"


def test_a_failed_gate_registers_a_challenger_only(experiment):
    evaluate_and_register(train_small())
    evaluate_and_register(train_small(model_kinds="xgboost", n_estimators=1, max_depth=1))
    assert _alias("champion") == "1"
    assert _alias("challenger") == "2"
    tags = MlflowClient().get_model_version(MODEL, "2").tags
    assert tags["fraud.decision"] == NOT_PROMOTED
    assert tags["fraud.compared_champion"] == "1"
    assert "not_worse_average_precision" in tags["fraud.decision_reason"]


def test_approval_path(experiment, capsys):
    client = MlflowClient()
    train_run_id = train_small()
    evaluate_and_register(train_run_id, require_approval=True)
    aliases = client.get_registered_model(MODEL).aliases
    assert {alias: str(version) for alias, version in aliases.items()} == {"challenger": "1"}
    assert latest_run("register").data.tags["fraud.decision"] == AWAITING_APPROVAL
    code = main_with_exit_code(
        RegisterConfig,
        register,
        ["--require-approval", "--run-id", latest_run("evaluate").info.run_id],
        "",
    )
    assert code == 0
    assert "--approve-version 1" in capsys.readouterr().out

    register(RegisterConfig(approve_version="1", reason="reviewed the model card"))
    assert _alias("champion") == "1"
    tags = client.get_model_version(MODEL, "1").tags
    assert tags["fraud.approved_why"] == "reviewed the model card"
    assert tags["fraud.approved_by"] and tags["fraud.approved_at"]
    # Approving the champion again is refused.
    code = main_with_exit_code(RegisterConfig, register, ["--approve-version", "1"], "")
    assert code == EXIT_FAILED


def test_approval_is_refused_when_the_gate_failed(experiment, caplog):
    evaluate_and_register(train_small())
    evaluate_and_register(
        train_small(model_kinds="xgboost", n_estimators=1, max_depth=1), require_approval=True
    )
    code = main_with_exit_code(RegisterConfig, register, ["--approve-version", "2"], "")
    assert code == EXIT_FAILED
    assert "cannot be approved: gate failed" in caplog.text
    assert _alias("champion") == "1"


def test_rollback_restores_the_replaced_champion(experiment, caplog):
    client = MlflowClient()
    code = main_with_exit_code(RegisterConfig, register, ["--rollback", "--reason", "x"], "")
    assert code == EXIT_FAILED  # no model, nothing to roll back
    evaluate_and_register(train_small())
    code = main_with_exit_code(RegisterConfig, register, ["--rollback", "--reason", "x"], "")
    assert code == EXIT_FAILED
    assert "replaced no earlier champion" in caplog.text

    # The same model retrained: equal metrics are "no worse", so version 2 is promoted.
    evaluate_and_register(train_small())
    assert _alias("champion") == "2"
    assert client.get_model_version(MODEL, "2").tags["fraud.previous_champion"] == "1"
    register(RegisterConfig(rollback=True, reason="alerts doubled overnight"))
    assert _alias("champion") == "1"
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["fraud.rolled_back_why"] == "alerts doubled overnight"
    assert tags["fraud.rolled_back_by"] and tags["fraud.rolled_back_at"]
    run = latest_run("register")
    assert run.data.tags["fraud.action"] == "rollback"
    assert run.data.tags["fraud.rolled_back_from"] == "2"


def test_rollback_needs_a_reason(caplog):
    assert main_with_exit_code(RegisterConfig, register, ["--rollback"], "") == EXIT_BAD_PARAMETERS
    assert "--rollback needs --reason" in caplog.text
    with pytest.raises(ConfigError, match="cannot be used together"):
        RegisterConfig(rollback=True, reason="r", approve_version="2")


def test_an_alias_moved_by_another_writer_is_detected(experiment):
    client = MlflowClient()
    evaluate_and_register(train_small())
    evaluate_and_register(train_small(model_kinds="xgboost", n_estimators=1, max_depth=1))
    # This writer believes the champion is version 2; someone else has it at version 1.
    with (
        pytest.raises(PromotionConflictError, match="moved to version 1 \\(expected 2\\)"),
        RegistryChange(client, MODEL) as change,
    ):
        change.move_alias("challenger", "1")
        change.move_alias("champion", "2", expected_before="2")
    # The change is undone whole: the challenger moved back too.
    assert _alias("champion") == "1"
    assert _alias("challenger") == "2"


def test_a_promotion_in_progress_elsewhere_is_waited_for_then_reported(
    experiment, caplog, monkeypatch
):
    from fraud_detection.config import EvaluateConfig
    from fraud_detection.hardening import registry_change
    from fraud_detection.hardening.registry_change import promotion_lock
    from fraud_detection.steps.evaluate import evaluate
    from tests.support.pipeline import LENIENT_GATE

    monkeypatch.setattr(registry_change, "LOCK_WAIT_SECONDS", 1.0)
    client = MlflowClient()
    evaluate(EvaluateConfig(run_id=train_small(), gate=LENIENT_GATE))
    with promotion_lock(client, MODEL):
        code = main_with_exit_code(RegisterConfig, register, [], "register")
    assert code == EXIT_FAILED
    assert "another promotion of fraud-detector is in progress" in caplog.text
    # Nothing registered, no alias moved; the register run says why; the lock is gone again.
    assert [m.name for m in client.search_registered_models()] == []
    run = latest_run("register")
    assert run.info.status == "FAILED"
    assert "another promotion" in run.data.tags["fraud.error"]
    # The next attempt goes through.
    register(RegisterConfig())
    assert _alias("champion") == "1"
