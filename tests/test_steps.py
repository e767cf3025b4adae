"""The train, evaluate and register steps in-process, against a real SQLite tracking store."""

from dataclasses import replace

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fraud_detection.cli import EXIT_FAILED, flatten, main_with_exit_code
from fraud_detection.config import (
    EvaluateConfig,
    ModelConfig,
    RegisterConfig,
    TrackingConfig,
    TrainConfig,
)
from fraud_detection.evaluation import evaluate
from fraud_detection.model import DECISION_COLUMN, PROBABILITY_COLUMN
from fraud_detection.registry import register
from fraud_detection.tracking import CONTINUED_IN_TAG, STEP_TAG
from fraud_detection.training import MODEL_ID_TAG, train
from tests.conftest import FAST_MODEL, LENIENT_GATE, SMALL_DATA

MODEL = "fraud-detector"


def _train(**model_changes) -> str:
    config = TrainConfig(data=SMALL_DATA, model=replace(FAST_MODEL, **model_changes))
    train(config)
    return _latest("train").info.run_id


def _latest(step: str):
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("fraud-detection").experiment_id],
        filter_string=f"tags.`{STEP_TAG}` = '{step}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0]


def _evaluate_and_register(train_run_id: str) -> tuple[str, str]:
    evaluate(EvaluateConfig(run_id=train_run_id))
    evaluate_run_id = _latest("evaluate").info.run_id
    register(RegisterConfig(run_id=evaluate_run_id, gate=LENIENT_GATE))
    return evaluate_run_id, _latest("register").info.run_id


def test_train_evaluate_register(experiment):
    client = MlflowClient()
    train_run_id = _train()

    train_run = client.get_run(train_run_id)
    assert train_run.info.status == "FINISHED"
    assert train_run.info.experiment_id == experiment
    for name in (
        "validation_roc_auc",
        "validation_average_precision",
        "validation_card_precision_at_100",
    ):
        assert 0 < train_run.data.metrics[name] <= 1
    assert train_run.data.params["n_customers"] == str(SMALL_DATA.n_customers)
    assert (
        train_run.data.params["resolved_train_start"] == "2018-05-10"
    )  # 60 days from 2018-04-01, test = last 7
    assert 0 < float(train_run.data.params["threshold"]) < 1
    contexts = {i.tags[0].value for i in train_run.inputs.dataset_inputs}
    assert contexts == {"training", "validation"}
    candidates = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{train_run_id}'"
    )
    assert {run.data.params["model_kind"] for run in candidates} == {
        "xgboost",
        "logistic_regression",
    }

    model_id = train_run.data.tags[MODEL_ID_TAG]
    logged = mlflow.get_logged_model(model_id)
    assert logged.source_run_id == train_run_id
    model = mlflow.pyfunc.load_model(f"models:/{model_id}")
    assert model.metadata.get_input_schema().input_names()[0] == "TX_AMOUNT"
    example = model.input_example
    assert len(example) == 5
    output = model.predict(example)
    assert list(output.columns) == [PROBABILITY_COLUMN, DECISION_COLUMN]
    assert output[PROBABILITY_COLUMN].between(0, 1).all()

    evaluate_run_id, register_run_id = _evaluate_and_register(train_run_id)
    evaluation = client.get_run(evaluate_run_id)
    assert evaluation.data.tags["fraud.train_run_id"] == train_run_id
    assert evaluation.data.tags["fraud.champion_comparison"] == "no champion"
    assert 0.5 < evaluation.data.metrics["test_roc_auc"] <= 1
    artifacts = {a.path for a in client.list_artifacts(evaluate_run_id, "plots")}
    assert artifacts == {"plots/precision_recall_curve.png", "plots/roc_curve.png"}

    version = client.get_model_version_by_alias(MODEL, "champion")
    assert str(version.version) == "1"
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == "1"
    tags = version.tags
    assert tags["fraud.train_run_id"] == train_run_id
    assert tags["fraud.evaluate_run_id"] == evaluate_run_id
    assert tags["fraud.decision"] == "promoted"
    assert tags["fraud.decision_reason"] == "all criteria hold"
    assert len(tags["fraud.data_fingerprint"]) == 16
    assert "fraud.git_commit" in tags
    assert float(tags["fraud.test_roc_auc"]) == pytest.approx(
        evaluation.data.metrics["test_roc_auc"], abs=1e-6
    )
    decision = mlflow.artifacts.load_dict(f"runs:/{register_run_id}/decision.json")
    assert decision["promote"] is True

    champion = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert champion.predict(example).equals(output)

    # Registering the same evaluation again reuses the version.
    register(RegisterConfig(run_id=evaluate_run_id, gate=LENIENT_GATE))
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1


def test_a_worse_challenger_does_not_replace_the_champion(experiment):
    client = MlflowClient()
    _evaluate_and_register(_train())
    weak_run_id = _train(model_kinds="xgboost", n_estimators=1, max_depth=1)
    evaluate_run_id, _ = _evaluate_and_register(weak_run_id)

    evaluation = client.get_run(evaluate_run_id)
    assert evaluation.data.tags["fraud.champion_version"] == "1"
    assert "champion_test_average_precision" in evaluation.data.metrics
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    challenger = client.get_model_version_by_alias(MODEL, "challenger")
    assert str(challenger.version) == "2"
    assert challenger.tags["fraud.decision"] == "not promoted"
    assert "not_worse_average_precision failed" in challenger.tags["fraud.decision_reason"]


def test_bad_data_fails_the_run_and_registers_nothing(experiment, tmp_path, small_transactions):
    path = tmp_path / "transactions.csv"
    small_transactions.drop(columns="TX_AMOUNT").to_csv(path, index=False)
    code = main_with_exit_code(TrainConfig, train, ["--data", str(path)], "train")
    assert code == EXIT_FAILED
    run = _latest("train")
    assert run.info.status == "FAILED"
    assert "missing column(s) TX_AMOUNT" in run.data.tags["fraud.error"]
    assert MlflowClient().search_registered_models() == []


def test_evaluate_refuses_data_that_changed_since_training(
    experiment, tmp_path, small_transactions
):
    path = tmp_path / "transactions.parquet"
    small_transactions.to_parquet(path)
    train(TrainConfig(data=replace(SMALL_DATA, data=str(path)), model=FAST_MODEL))
    small_transactions.assign(TX_AMOUNT=small_transactions["TX_AMOUNT"] + 1).to_parquet(path)
    code = main_with_exit_code(EvaluateConfig, evaluate, [], "evaluate")
    assert code == EXIT_FAILED
    assert "the data changed since train run" in _latest("evaluate").data.tags["fraud.error"]


def test_evaluate_without_a_train_run_names_the_experiment(experiment, caplog):
    code = main_with_exit_code(EvaluateConfig, evaluate, [], "evaluate")
    assert code == EXIT_FAILED
    assert "no finished train run in experiment 'fraud-detection'" in caplog.text


def test_step_leaves_a_launcher_run_in_default_and_continues_in_the_experiment(
    experiment, monkeypatch
):
    """What `mlflow run .` without --experiment-name does: its run lands in Default."""
    client = MlflowClient()
    launcher = client.create_run("0", tags={"mlflow.source.git.commit": "abc123"})
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher.info.run_id)
    config = TrainConfig(data=SMALL_DATA, model=replace(FAST_MODEL, model_kinds="xgboost"))
    train(config)
    run = _latest("train")
    assert run.info.experiment_id == experiment
    assert run.data.tags["fraud.launcher_run_id"] == launcher.info.run_id
    assert run.data.tags["mlflow.source.git.commit"] == "abc123"
    assert client.get_run(launcher.info.run_id).data.tags[CONTINUED_IN_TAG] == run.info.run_id


def test_launcher_experiment_wins_over_the_default_name(tracking_uri, monkeypatch, tmp_path):
    client = MlflowClient()
    other = client.create_experiment("team-x", artifact_location=(tmp_path / "a").as_uri())
    launcher = client.create_run(other)
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher.info.run_id)
    train(TrainConfig(data=SMALL_DATA, model=replace(FAST_MODEL, model_kinds="xgboost")))
    run = client.get_run(launcher.info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[STEP_TAG] == "train"
    assert run.data.params["n_customers"] == str(SMALL_DATA.n_customers)


def test_conflicting_experiment_names_are_refused(tracking_uri, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team-x")
    config = TrainConfig(tracking=TrackingConfig(experiment_name="team-y"), data=SMALL_DATA)
    code = main_with_exit_code(
        TrainConfig, train, [f"--{k.replace('_', '-')}={v}" for k, v in flatten(config).items()], ""
    )
    assert code == 2
    assert "use one of the two" in caplog.text


def test_params_logged_by_the_launcher_are_not_logged_again(experiment):
    """`mlflow run` logs parameters as it received them ('0.50'); ours would clash ('0.5')."""
    client = MlflowClient()
    launcher = client.create_run(experiment)
    client.log_param(launcher.info.run_id, "learning_rate", "0.050")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_RUN_ID", launcher.info.run_id)
        train(TrainConfig(data=SMALL_DATA, model=replace(FAST_MODEL, model_kinds="xgboost")))
    params = client.get_run(launcher.info.run_id).data.params
    assert params["learning_rate"] == "0.050"
    assert params["n_estimators"] == str(FAST_MODEL.n_estimators)


def test_scoring_frame_with_extra_columns(experiment, small_transactions):
    train_run_id = _train(model_kinds="logistic_regression")
    model_id = MlflowClient().get_run(train_run_id).data.tags[MODEL_ID_TAG]
    model = mlflow.pyfunc.load_model(f"models:/{model_id}")
    columns = model.metadata.get_input_schema().input_names()
    rows = pd.DataFrame([[1.0] * len(columns)], columns=columns)
    assert model.predict(rows)[DECISION_COLUMN].isin([0, 1]).all()
    assert model.model_config["model_kind"] == "logistic_regression"
    assert ModelConfig().kinds == ("xgboost", "logistic_regression")
