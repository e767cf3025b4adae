"""The evaluate step against a real SQLite store: metrics, plots, model card, champion gate."""

from dataclasses import replace

import mlflow
import numpy as np
import pytest
from mlflow.entities import Run
from mlflow.models import EvaluationResult
from mlflow.tracking import MlflowClient

from fraud_detection import contract
from fraud_detection.cli import (
    EXIT_FAILED,
    main_with_exit_code,
)
from fraud_detection.config import EvaluateConfig, GateConfig, TrainConfig, TransactionColumns
from fraud_detection.data.features import FEATURE_COLUMNS
from fraud_detection.data.windows import prepare_data
from fraud_detection.modelling.evaluation import Champion, Scored
from fraud_detection.monitoring.drift import binned
from fraud_detection.steps.evaluate import check_gate, evaluate
from fraud_detection.steps.train import train
from tests.support.pipeline import (
    FAST_MODEL,
    LENIENT_GATE,
    SMALL_DATA,
    evaluate_and_register,
    latest_run,
    train_small,
)

PLOTS = {
    "test_precision_recall_curve.png",
    "test_roc_curve.png",
    "test_calibration_curve.png",
    "test_confusion_matrix.png",
    "test_savings_vs_threshold.png",
    "test_feature_importance.png",
    "test_mean_abs_contribution.png",
}


def test_evaluation_metrics_plots_and_model_card(experiment):
    client = MlflowClient()
    train_run_id = train_small()
    evaluate(EvaluateConfig(run_id=train_run_id, gate=LENIENT_GATE))
    run = latest_run("evaluate")
    metrics = run.data.metrics
    for name in ("roc_auc", "average_precision", "card_precision_at_100", "recall_at_1pct_fpr"):
        assert 0 < metrics[f"test_{name}"] <= 1, name
    assert "test_savings_at_threshold" in metrics
    # The default classifier metrics at the model's threshold, from mlflow.models.evaluate.
    assert {"test_precision_score", "test_recall_score", "test_f1_score"} <= set(metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert PLOTS | {"model_card.md", "model_card.html", "gate.json"} <= artifacts

    card = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/model_card.md")
    train_run = client.get_run(train_run_id)
    assert train_run.data.params["data_fingerprint"] in card
    assert train_run.data.tags["fraud.model_id"] in card
    assert f"{metrics['test_roc_auc']:.4f}" in card
    # The reason codes' global view: one row per feature, largest mean |contribution| first.
    section = card.split("## Reason codes: mean absolute contribution on the test window")[1]
    rows = [line for line in section.split("## Plots")[0].splitlines() if line.startswith("| ")]
    means = [float(row.split("|")[2]) for row in rows[1:]]
    assert len(means) == len(FEATURE_COLUMNS)
    assert means == sorted(means, reverse=True) and means[0] > 0
    html = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/model_card.html")
    assert html.count("data:image/png;base64,") == len(PLOTS) - 1  # confusion matrix: MLflow's

    # Metrics are linked to the logged model and its test dataset (MLflow 3 LoggedModel).
    logged = mlflow.get_logged_model(train_run.data.tags["fraud.model_id"])
    linked = {m.key for m in logged.metrics}
    assert {"test_roc_auc", "validation_average_precision"} <= linked
    assert run.data.tags["fraud.gate"] == "passed"
    assert run.data.tags["fraud.champion_comparison"] == "no champion"
    assert_score_reference_is_the_test_windows(run, train_run)


def assert_score_reference_is_the_test_windows(run: Run, train_run: Run) -> None:
    """The monitor's out-of-sample reference: the model's scores on every row of the test
    window it never saw (the cards known to be compromised too, as the monitor watches them),
    rebuilt here from the train run's recipe and scored again."""
    reference = contract.read_score_reference(run.info.run_id)
    data, split = contract.read_data_recipe(train_run)
    prepared = prepare_data(data, split)
    test, times = prepared.split.test, prepared.table["TX_DATETIME"]
    rows = prepared.table[(times >= test.start) & (times < test.end)]
    model = mlflow.pyfunc.load_model(f"models:/{train_run.data.tags['fraud.model_id']}")
    threshold = model.model_config["threshold"]
    scores = model.predict(rows[list(model.model_config["features"])])["fraud_probability"]
    scores = scores.to_numpy()
    assert reference.rows == len(rows) > run.data.metrics["test_example_count"]
    assert reference.threshold == threshold
    assert reference.alert_rate == np.mean(scores >= threshold) > 0
    assert reference.score == binned(scores)
    described = prepared.split.describe()
    assert reference.window == f"{described['test_first_day']}..{described['test_last_day']}"
    assert described["test_first_day"] > described["train_last_day"]


def test_the_champion_is_scored_on_the_same_rows_and_gates_the_challenger(experiment):
    client = MlflowClient()
    evaluate_and_register(train_small())
    weak_train_run_id = train_small(model_kinds="xgboost", n_estimators=1, max_depth=1)
    evaluate(EvaluateConfig(run_id=weak_train_run_id, gate=LENIENT_GATE))
    run = latest_run("evaluate")
    assert run.data.tags["fraud.champion_version"] == "1"
    assert run.data.metrics["champion_test_example_count"] == run.data.metrics["test_example_count"]
    assert run.data.tags["fraud.gate"] == "failed"
    assert "not_worse_average_precision" in run.data.tags["fraud.gate_report"]
    gate = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/gate.json")
    assert gate["champion_version"] == "1"
    assert {c["name"] for c in gate["criteria"] if not c["passed"]} >= {
        "not_worse_average_precision"
    }
    card = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/model_card.md")
    assert "champion v1" in card
    assert client.get_run(run.info.run_id).data.metrics["champion_test_roc_auc"] > 0


def _result(**metrics: float) -> EvaluationResult:
    return EvaluationResult(metrics={f"test_{k}": v for k, v in metrics.items()}, artifacts={})


SCORED = Scored(probabilities=None, decisions=None)


@pytest.mark.parametrize(
    ("candidate", "champion", "tolerance", "passed"),
    [
        (0.70, 0.70, 0.0, True),  # equal is "no worse"
        (0.69, 0.70, 0.0, False),
        (0.69, 0.70, 0.02, True),  # within the tolerance
        (0.75, 0.70, 0.0, True),
    ],
)
def test_gate_against_the_champion(candidate, champion, tolerance, passed):
    gate = GateConfig(min_roc_auc=0.5, min_average_precision=0.1, champion_tolerance=tolerance)
    criteria = check_gate(
        _result(roc_auc=0.9, average_precision=candidate),
        {"roc_auc": 0.9, "average_precision": champion},
        gate,
        Champion("3", "m-1", SCORED),
    )
    outcome = {c.name: c.passed for c in criteria}
    assert outcome["not_worse_average_precision"] is passed
    assert outcome["not_worse_roc_auc"] is True
    assert outcome["min_roc_auc"] and outcome["min_average_precision"]


def test_gate_floors_and_missing_comparisons():
    gate = GateConfig(min_roc_auc=0.95, min_card_precision_at_100=0.1)
    criteria = {
        c.name: c for c in check_gate(_result(roc_auc=0.9, average_precision=0.5), {}, gate, None)
    }
    assert not criteria["min_roc_auc"].passed
    assert "0.9000 vs floor 0.9500" in criteria["min_roc_auc"].detail
    assert not criteria["min_card_precision_at_100"].passed  # a floor on a metric not measured
    assert criteria["beats_champion"].passed  # no champion yet
    unavailable = Champion("2", "m-2", None, "unavailable: missing column V1")
    last = check_gate(_result(roc_auc=0.99, average_precision=0.9), {}, LENIENT_GATE, unavailable)[
        -1
    ]
    assert (last.name, last.passed) == ("beats_champion", False)
    assert "missing column V1" in last.detail


def test_evaluate_refuses_data_that_changed_since_training(
    experiment, tmp_path, small_transactions
):
    path = tmp_path / "transactions.parquet"
    small_transactions.to_parquet(path)
    train(TrainConfig(data=replace(SMALL_DATA, data=str(path)), model=FAST_MODEL))
    small_transactions.assign(TX_AMOUNT=small_transactions["TX_AMOUNT"] + 1).to_parquet(path)
    code = main_with_exit_code(EvaluateConfig, evaluate, [], "evaluate")
    assert code == EXIT_FAILED
    run = latest_run("evaluate")
    assert run.info.status == "FAILED"
    assert "the data changed since train run" in run.data.tags["fraud.error"]


def test_evaluate_without_a_train_run_names_the_experiment(experiment, caplog):
    code = main_with_exit_code(EvaluateConfig, evaluate, [], "evaluate")
    assert code == EXIT_FAILED
    assert "no finished train run in experiment 'fraud-detection'" in caplog.text


def test_a_label_column_named_like_the_models_decision_is_evaluated(
    experiment, tmp_path, small_transactions
):
    """A fork's label called ``is_fraud`` (the model's own decision column) must not collide
    with the predictions inside the evaluation."""
    path = tmp_path / "transactions.parquet"
    small_transactions.rename(columns={"TX_FRAUD": "is_fraud"}).to_parquet(path)
    columns = TransactionColumns(label_column="is_fraud")
    data = replace(SMALL_DATA, data=str(path), columns=columns)
    train(TrainConfig(data=data, model=FAST_MODEL))
    evaluate(EvaluateConfig(gate=LENIENT_GATE))
    run = latest_run("evaluate")
    assert run.info.status == "FINISHED"
    assert 0.5 < run.data.metrics["test_roc_auc"] <= 1


def test_a_train_run_without_its_data_recipe_is_a_lineage_problem_not_an_outage(experiment):
    """The artifact store answers and the run has no recipe: lineage, not the store."""
    from fraud_detection import contract
    from fraud_detection.errors import LineageError

    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_dict({"other": 1}, "other.json")
    with pytest.raises(LineageError, match=f"train run {run.info.run_id} has no data_recipe"):
        contract.read_data_recipe(MlflowClient().get_run(run.info.run_id))
