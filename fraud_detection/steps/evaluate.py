"""The evaluate step: rebuild a train run's test period, evaluate, compare with @champion, gate.

1. The train run's ``data_recipe.json`` rebuilds the same data (checked against its
   fingerprint), features and split; the test window is what the model has never seen.
2. The candidate and the current champion score exactly the same rows, where the engine
   holds them (``Engine.evaluate_window``).
3. Their metrics are logged, linked to each model's id: the standard classifier metrics at
   the model's threshold and the fraud metrics. On the pandas engine ``mlflow.models.evaluate``
   logs them with the confusion matrix and the plots (``modelling.evaluation``); on Spark, the
   same metrics under the same names come from aggregates (``spark.evaluation``), with the
   feature importance as the one plot.
   The candidate's score bins and alert rate on the test window are saved for the monitor
   (``contract.SCORE_REFERENCE_ARTIFACT``): its out-of-sample reference for the score and the
   alert rate.
4. ``mlflow.validate_evaluation_results`` applies the gate: absolute floors, and no worse
   than the champion on the same rows. The outcome is recorded for ``register``.
5. A model card (Markdown and HTML) summarises it all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.models import EvaluationResult, MetricThreshold
from mlflow.models.evaluation.validation import ModelValidationFailedException
from mlflow.tracking import MlflowClient

from fraud_detection import contract
from fraud_detection.config import CHAMPION_ALIAS, DataConfig, EvaluateConfig, GateConfig
from fraud_detection.config.fields import flatten
from fraud_detection.contract import TEST_PREFIX, Evaluation, Step, TrainedModel
from fraud_detection.engine import Engine, TestData, engine_for
from fraud_detection.errors import LineageError
from fraud_detection.hardening.registry_change import version_by_alias
from fraud_detection.modelling.evaluation import (
    Champion,
    ChampionVersion,
    ModelUnderTest,
    WindowEvaluation,
    unprefixed,
)
from fraud_detection.modelling.metrics import CARD_PRECISION_K, RANKING_METRICS
from fraud_detection.reporting.model_card import ModelCard, to_html, to_markdown
from fraud_detection.tracking import find_step_run, step_run

logger = logging.getLogger(__name__)

# MetricThreshold only compares with a strictly positive min_absolute_change; "no worse than the
# champion, within tolerance" is expressed by lowering the baseline by tolerance + 2 * EPSILON
# and requiring a change of EPSILON (so equal metrics pass).
EPSILON = 1e-9


@dataclass(frozen=True)
class Criterion:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class TestWindow:
    """The rows a train run's model has never seen, rebuilt from its data recipe."""

    data: TestData  # source, fingerprint, split and the rows
    data_config: DataConfig

    @property
    def rows(self) -> Any:
        """The engine's frame: pandas, or Spark (never collected)."""
        return self.data.rows


def evaluate(config: EvaluateConfig) -> str:
    """Run the evaluate step; return a one-paragraph report."""
    experiment = config.tracking.experiment_name
    with step_run(Step.EVALUATE, experiment, flatten(config)) as run:
        train_run = find_step_run(experiment, Step.TRAIN, config.run_id)
        trained = TrainedModel.of(train_run)
        mlflow.set_tags(Evaluation.lineage_tags(trained.run_id, trained.model_id))
        engine = engine_for(config.engine)
        test = rebuild_test_window(train_run, trained, engine)
        candidate = ModelUnderTest.load(trained.model_id)
        settings = candidate.settings
        measured = engine.evaluate_window(
            test.data, test.data_config, candidate, _champion_version(config.model_name)
        )
        _save_score_reference(run.info.run_id, measured, test)
        champion, champion_metrics = measured.champion, measured.champion_metrics
        criteria = check_gate(measured.candidate, champion_metrics, config.gate, champion)
        passed = all(criterion.passed for criterion in criteria)
        _record_gate(criteria, passed, champion)
        candidate_metrics = unprefixed(measured.candidate.metrics, TEST_PREFIX)
        _log_model_card(
            _model_card(
                trained,
                run,
                test,
                settings,
                candidate_metrics,
                measured,
                criteria,
            )
        )
        return (
            f"evaluate run {run.info.run_id} of train run {trained.run_id}: "
            + ", ".join(
                f"{name} {candidate_metrics[name]:.4f}"
                for name in RANKING_METRICS
                if name in candidate_metrics
            )
            + (f"; champion v{champion.version}" if champion else "; no champion yet")
            + f"; gate {'passed' if passed else 'failed'}"
        )


def _champion_version(model_name: str) -> ChampionVersion | None:
    """The version that holds @champion, to be scored on the same rows (None: tagged so)."""
    # An outage is raised, not read as "no champion": the gate would skip the comparison.
    version = version_by_alias(MlflowClient(), model_name, CHAMPION_ALIAS)
    if version is None:
        mlflow.set_tag(contract.CHAMPION_COMPARISON_TAG, "no champion")
        logger.info("No %s@%s yet: nothing to compare with", model_name, CHAMPION_ALIAS)
        return None
    return ChampionVersion(model_name, str(version.version), version.model_id)


def _save_score_reference(run_id: str, measured: WindowEvaluation, test: TestWindow) -> None:
    """The candidate's score bins and alert rate on the test window, which it never saw: what
    the monitor compares a registered version's windows with (``monitoring.reference``)."""
    reference = measured.score_reference
    if reference is None:
        logger.warning(
            "This engine measured no score reference: the monitor will use the "
            "model's in-sample one"
        )
        return
    described = test.data.split.describe()
    window = f"{described['test_first_day']}..{described['test_last_day']}"
    contract.write_score_reference(run_id, replace(reference, window=window))
    logger.info(
        "Score reference for the monitor: alert rate %.5f on %d test rows (%s)",
        reference.alert_rate,
        reference.rows,
        window,
    )


def rebuild_test_window(train_run: Run, trained: TrainedModel, engine: Engine) -> TestWindow:
    """The train run's test window: its recipe rebuilt, the data checked to be the same.

    Each engine digests the data its own way: a run trained on one engine is evaluated on it.
    """
    data_config, split_config = contract.read_data_recipe(train_run)
    trained_on = contract.engine_of(train_run)
    if trained_on != engine.name:
        raise LineageError(
            f"train run {trained.run_id} ran with engine={trained_on}: evaluate it with "
            f"engine={trained_on} (each engine fingerprints the data its own way)"
        )
    data = engine.test_window(data_config, split_config)
    if trained.data_fingerprint != data.fingerprint:
        raise LineageError(
            f"{data.source}: the data changed since train run "
            f"{trained.run_id} (fingerprint {data.fingerprint}, trained on "
            f"{trained.data_fingerprint}); evaluate needs the same data"
        )
    return TestWindow(data, data_config)


def check_gate(
    candidate: EvaluationResult,
    champion_metrics: dict[str, float],
    gate: GateConfig,
    champion: Champion | None,
) -> list[Criterion]:
    """The promotion criteria, each decided by ``mlflow.validate_evaluation_results``."""
    floors = {
        "roc_auc": gate.min_roc_auc,
        "average_precision": gate.min_average_precision,
        f"card_precision_at_{CARD_PRECISION_K}": gate.min_card_precision_at_100,
    }
    criteria = []
    for name, floor in floors.items():
        key = TEST_PREFIX + name
        if key not in candidate.metrics:
            criteria.append(Criterion(f"min_{name}", floor == 0, f"not measured (floor {floor})"))
            continue
        passed = _validates(
            {key: MetricThreshold(threshold=floor, greater_is_better=True)}, candidate
        )
        criteria.append(
            Criterion(f"min_{name}", passed, f"{candidate.metrics[key]:.4f} vs floor {floor:.4f}")
        )
    if champion is None:
        criteria.append(Criterion("beats_champion", True, "no champion yet"))
        return criteria
    if champion.scored is None:
        criteria.append(Criterion("beats_champion", False, f"no comparison ({champion.problem})"))
        return criteria
    for name in RANKING_METRICS:
        key = TEST_PREFIX + name
        if key not in candidate.metrics or name not in champion_metrics:
            continue
        baseline = EvaluationResult(
            metrics={key: champion_metrics[name] - gate.champion_tolerance - 2 * EPSILON},
            artifacts={},
        )
        threshold = MetricThreshold(min_absolute_change=EPSILON, greater_is_better=True)
        passed = _validates({key: threshold}, candidate, baseline)
        criteria.append(
            Criterion(
                f"not_worse_{name}",
                passed,
                f"{candidate.metrics[key]:.4f} vs champion v{champion.version} "
                f"{champion_metrics[name]:.4f} (tolerance {gate.champion_tolerance})",
            )
        )
    return criteria


def _validates(
    thresholds: dict[str, MetricThreshold],
    candidate: EvaluationResult,
    baseline: EvaluationResult | None = None,
) -> bool:
    try:
        mlflow.validate_evaluation_results(thresholds, candidate, baseline)
    except ModelValidationFailedException:
        return False
    return True


def _record_gate(criteria: list[Criterion], passed: bool, champion: Champion | None) -> None:
    failed = [c for c in criteria if not c.passed]
    report = "all criteria hold" if passed else "; ".join(f"{c.name}: {c.detail}" for c in failed)
    mlflow.set_tags(Evaluation.gate_tags(passed, report))
    mlflow.log_dict(
        {
            "passed": passed,
            "champion_version": champion.version if champion else None,
            "criteria": [vars(c) for c in criteria],
        },
        contract.GATE_ARTIFACT,
    )
    logger.info("Gate %s: %s", "passed" if passed else "failed", report)


# The metrics the model card shows, in this order (those measured).
CARD_METRICS = (
    *RANKING_METRICS,
    "recall_at_1pct_fpr",
    "savings_at_threshold",
    "precision_score",
    "recall_score",
    "f1_score",
)


def _model_card(
    trained: TrainedModel,
    run: mlflow.ActiveRun,
    test: TestWindow,
    settings: dict,
    candidate_metrics: dict[str, float],
    measured: WindowEvaluation,
    criteria: list[Criterion],
) -> ModelCard:
    champion, champion_metrics = measured.champion, measured.champion_metrics
    described = test.data.split.describe()
    return ModelCard(
        title=(
            f"Fraud model card: {settings['model_kind']} trained on "
            f"{described['train_first_day']} .. {described['train_last_day']}"
        ),
        lineage={
            "model": f"models:/{trained.model_id}",
            "train run": trained.run_id,
            "evaluate run": run.info.run_id,
            "git commit": trained.git_commit,
            "data source": test.data.source,
            "data fingerprint": test.data.fingerprint,
        },
        windows={
            name: f"{described[f'{name}_first_day']} .. {described[f'{name}_last_day']}"
            for name in ("validation_train", "validation", "train", "test")
        },
        decision={
            "threshold": f"{settings['threshold']:.6f}",
            "review cost per alert": f"{settings['review_cost']:g}",
            "expected savings on validation": f"{trained.expected_savings:,.0f}",
        },
        metrics=[
            (name, candidate_metrics[name], champion_metrics.get(name))
            for name in CARD_METRICS
            if name in candidate_metrics
        ],
        champion_label=f"champion v{champion.version}" if champion else "no champion",
        gate=[(c.name, c.passed, c.detail) for c in criteria],
        plots=measured.figures,
        plots_note=measured.plots_note,
        contributions=measured.contributions,
    )


def _log_model_card(card: ModelCard) -> None:
    mlflow.log_text(to_markdown(card), contract.MODEL_CARD_MARKDOWN)
    mlflow.log_text(to_html(card), contract.MODEL_CARD_HTML)
