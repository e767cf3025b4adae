"""The train step against a real SQLite tracking store: sweep, curves, checkpoints, threshold."""

from dataclasses import replace

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fraud_detection.config import (
    CostConfig,
    ModelConfig,
    TrainConfig,
)
from fraud_detection.contract import (
    BEST_CANDIDATE_RUN_TAG,
    MODEL_ID_TAG,
)
from fraud_detection.data.windows import (
    prepare_data,
    training_windows,
)
from fraud_detection.modelling.estimators import (
    GRIDS,
    CandidateSpec,
    candidate_specs,
    fit_candidate,
)
from fraud_detection.modelling.metrics import savings
from fraud_detection.modelling.pyfunc import (
    DECISION_COLUMN,
    PROBABILITY_COLUMN,
)
from fraud_detection.modelling.threshold import tune_threshold
from fraud_detection.steps.train import train
from tests.support.pipeline import FAST_MODEL, SMALL_DATA, latest_run, train_small


def _children(experiment_id: str, parent_run_id: str):
    return MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )


def test_candidate_specs_follow_the_grid():
    small = candidate_specs(ModelConfig())
    assert [spec.kind for spec in small] == ["xgboost"] * len(GRIDS["small"]) + [
        "logistic_regression"
    ]
    assert len({spec.name for spec in small}) == len(small)
    assert len(candidate_specs(ModelConfig(grid="large", model_kinds="xgboost"))) == 32
    assert candidate_specs(ModelConfig(grid="none", model_kinds="xgboost")) == [
        CandidateSpec("xgboost")
    ]


def test_sweep_runs_one_nested_run_per_candidate_and_logs_only_the_best(experiment):
    client = MlflowClient()
    train_run_id = train_small(grid="small")
    train_run = client.get_run(train_run_id)
    children = _children(experiment, train_run_id)
    assert len(children) == len(GRIDS["small"]) + 1
    assert all(child.info.status == "FINISHED" for child in children)
    assert all(child.info.experiment_id == experiment for child in children)

    best_child = max(children, key=lambda run: run.data.metrics["validation_average_precision"])
    assert train_run.data.tags[BEST_CANDIDATE_RUN_TAG] == best_child.info.run_id
    assert train_run.data.params["best_candidate"] == best_child.data.tags["fraud.candidate"]
    assert train_run.data.metrics["validation_average_precision"] == pytest.approx(
        best_child.data.metrics["validation_average_precision"]
    )
    # One model per train run, logged by the parent; children log none.
    models = mlflow.search_logged_models(experiment_ids=[experiment], output_format="list")
    assert [model.source_run_id for model in models] == [train_run_id]


def test_candidates_record_per_round_curves_with_steps(experiment):
    client = MlflowClient()
    train_run_id = train_small(model_kinds="xgboost", early_stopping_rounds=5)
    child = _children(experiment, train_run_id)[0]
    history = client.get_metric_history(child.info.run_id, "validation_logloss")
    train_history = client.get_metric_history(child.info.run_id, "train_logloss")
    best_rounds = int(child.data.params["best_rounds"])
    assert [point.step for point in history] == list(range(1, len(history) + 1))
    assert len(history) == len(train_history)
    # Early stopping kept fewer rounds than it tried.
    assert best_rounds < len(history) <= FAST_MODEL.n_estimators
    assert train_history[-1].value < train_history[0].value
    # The final refit logs its own training curve, as long as the rounds it kept.
    final_curve = client.get_metric_history(train_run_id, "train_logloss")
    assert len(final_curve) == best_rounds


def test_final_booster_is_checkpointed(experiment):
    client = MlflowClient()
    train_run_id = train_small(model_kinds="xgboost", early_stopping_rounds=0)
    files = sorted(a.path for a in client.list_artifacts(train_run_id, "checkpoints"))
    # 60 rounds, one checkpoint every 20 rounds before the last (the last is the model itself).
    assert files == ["checkpoints/booster_20.ubj", "checkpoints/booster_40.ubj"]


def test_system_metrics_are_logged(experiment, monkeypatch):
    # MLflow samples every 10 s by default; the test run lasts about two.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    train_run = MlflowClient().get_run(train_small(model_kinds="xgboost"))
    assert any(key.startswith("system/") for key in train_run.data.metrics)


def test_autolog_mode_logs_through_mlflow_autolog(experiment):
    client = MlflowClient()
    train_run_id = train_small(tracking_mode="autolog")
    children = _children(experiment, train_run_id)
    xgboost_child = next(c for c in children if c.data.params["model_kind"] == "xgboost")
    # Logged by MLflow's XGBoost autologging, not by the template.
    assert "max_depth" in xgboost_child.data.params
    assert any(key.startswith("validation_1-logloss") for key in xgboost_child.data.metrics)
    # The selection metric is there in both modes, and autologging is off again afterwards.
    assert "validation_average_precision" in xgboost_child.data.metrics
    from mlflow.utils.autologging_utils import autologging_is_disabled

    assert autologging_is_disabled("xgboost")
    assert client.get_run(train_run_id).data.tags[MODEL_ID_TAG]


def test_parallel_candidates_land_in_their_experiment_without_lock_errors(experiment):
    train_run_id = train_small(grid="small", parallel_candidates=2)
    children = _children(experiment, train_run_id)
    assert len(children) == len(GRIDS["small"]) + 1
    assert {child.info.status for child in children} == {"FINISHED"}
    assert {child.info.experiment_id for child in children} == {experiment}
    default = MlflowClient().search_runs(["0"])
    assert default == []


def test_threshold_maximises_savings_on_validation(small_transactions):
    prepared = prepare_data(SMALL_DATA, TrainConfig().split)
    windows = training_windows(prepared, SMALL_DATA)
    fitted = fit_candidate(
        CandidateSpec("xgboost"),
        FAST_MODEL,
        prepared.features,
        windows.validation_train,
        "TX_FRAUD",
        validation=windows.validation,
    )
    X = windows.validation[list(prepared.features)].to_numpy(dtype=np.float32)
    labels = windows.validation["TX_FRAUD"].to_numpy()
    amounts = windows.validation["TX_AMOUNT"].to_numpy()
    choice = tune_threshold(fitted.estimator, X, labels, amounts, review_cost=5.0)
    scores = fitted.estimator.predict_proba(X)[:, 1]
    best = savings(labels, scores >= choice.threshold, amounts, 5.0)
    assert choice.expected_savings == pytest.approx(best)
    # No candidate threshold does better, and a dearer review raises the bar.
    brute_force = [savings(labels, scores >= t, amounts, 5.0) for t in choice.thresholds]
    assert best == pytest.approx(max(brute_force))
    dearer = tune_threshold(fitted.estimator, X, labels, amounts, review_cost=200.0)
    assert dearer.threshold >= choice.threshold


def test_the_threshold_and_its_costs_live_in_the_model(experiment):
    config = TrainConfig(data=SMALL_DATA, model=FAST_MODEL, cost=CostConfig(review_cost=12.5))
    train(config)
    run = latest_run("train")
    model = mlflow.pyfunc.load_model(f"models:/{run.data.tags[MODEL_ID_TAG]}")
    settings = model.model_config
    assert settings["review_cost"] == 12.5
    assert run.data.params["review_cost"] == "12.5"
    assert run.data.metrics["validation_expected_savings"] > 0
    rows = model.input_example
    output = model.predict(rows)
    expected = (output[PROBABILITY_COLUMN] >= settings["threshold"]).astype(int)
    assert output[DECISION_COLUMN].tolist() == expected.tolist()


def test_lineage_of_the_train_run(experiment):
    client = MlflowClient()
    run = client.get_run(train_small())
    contexts = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(contexts) == {"training", "validation"}
    assert contexts["training"].digest and contexts["training"].source_type == "code"
    recipe = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/data_recipe.json")
    assert recipe["n_customers"] == SMALL_DATA.n_customers
    assert len(run.data.params["data_fingerprint"]) == 16


def test_refused_parameters(tracking_uri):
    from fraud_detection.config import ConfigError

    with pytest.raises(ConfigError, match="grid must be one of none, small, large"):
        replace(FAST_MODEL, grid="huge")
    with pytest.raises(ConfigError, match="tracking_mode"):
        replace(FAST_MODEL, tracking_mode="auto")
    with pytest.raises(ConfigError, match="review_cost"):
        CostConfig(review_cost=-1)
