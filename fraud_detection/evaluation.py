"""The evaluate step: rebuild a train run's test period, evaluate, compare with @champion, gate.

1. The train run's ``data_recipe.json`` rebuilds the same data (checked against its
   fingerprint), features and split; the test window is what the model has never seen.
2. The candidate and the current champion score exactly the same rows.
3. ``mlflow.models.evaluate`` logs the standard classifier metrics and the confusion matrix
   at the model's threshold, plus the fraud metrics (custom metrics) and plots (custom
   artifacts), linked to each model's id.
4. ``mlflow.validate_evaluation_results`` applies the gate: absolute floors, and no worse
   than the champion on the same rows. The outcome is recorded for ``register``.
5. A model card (Markdown and HTML) summarises it all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.models import EvaluationResult, MetricThreshold, make_metric
from mlflow.models.evaluation.validation import ModelValidationFailedException
from mlflow.tracking import MlflowClient
from sklearn.metrics import average_precision_score, roc_auc_score

from fraud_detection import plots
from fraud_detection.cli import build_config, flatten
from fraud_detection.config import (
    CHAMPION_ALIAS,
    DataConfig,
    EvaluateConfig,
    GateConfig,
    SplitConfig,
)
from fraud_detection.data import require_both_classes
from fraud_detection.errors import LineageError, OutageError, is_absent
from fraud_detection.metrics import (
    CARD_PRECISION_K,
    RANKING_METRICS,
    card_precision_at_k,
    recall_at_false_positive_rate,
    savings,
    savings_curve,
)
from fraud_detection.model import DECISION_COLUMN, PROBABILITY_COLUMN, feature_importance
from fraud_detection.model_card import ModelCard, to_html, to_markdown
from fraud_detection.outages import diagnose
from fraud_detection.schema import DAY_COLUMN
from fraud_detection.tracking import find_step_run, pandas_dataset, step_run
from fraud_detection.training import (
    DATA_FINGERPRINT_PARAM,
    DATA_RECIPE_ARTIFACT,
    MODEL_ID_TAG,
    RESOLVED_TRAIN_START_PARAM,
    evaluation_window,
    prepare_data,
)

logger = logging.getLogger(__name__)

TRAIN_RUN_TAG = "fraud.train_run_id"
CHAMPION_VERSION_TAG = "fraud.champion_version"
CHAMPION_COMPARISON_TAG = "fraud.champion_comparison"
GATE_TAG = "fraud.gate"
GATE_REPORT_TAG = "fraud.gate_report"
GATE_ARTIFACT = "gate.json"
TEST_PREFIX = "test_"
CHAMPION_PREFIX = "champion_test_"
# MetricThreshold only compares with a strictly positive min_absolute_change; "no worse than the
# champion, within tolerance" is expressed by lowering the baseline by tolerance + 2 * EPSILON
# and requiring a change of EPSILON (so equal metrics pass).
EPSILON = 1e-9


@dataclass(frozen=True)
class Scored:
    """A model's output on the test rows."""

    probabilities: np.ndarray
    decisions: np.ndarray


@dataclass(frozen=True)
class Champion:
    version: str
    model_id: str | None
    scored: Scored | None  # None: it could not score these rows (see problem)
    problem: str = ""


@dataclass(frozen=True)
class Criterion:
    name: str
    passed: bool
    detail: str


def train_run_configs(train_run: Run) -> tuple[DataConfig, SplitConfig]:
    """The data and split a train run used, from its ``data_recipe.json`` artifact."""
    try:
        recipe = mlflow.artifacts.load_dict(f"runs:/{train_run.info.run_id}/{DATA_RECIPE_ARTIFACT}")
    except Exception as error:
        if (outage := diagnose(error)) is not None:
            # The store is down, not the lineage broken: say which, never blame the run.
            raise OutageError(outage) from error
        raise LineageError(
            f"train run {train_run.info.run_id} has no {DATA_RECIPE_ARTIFACT} "
            f"({str(error).splitlines()[0][:300]})"
        ) from error
    # Pin the start the train step resolved, in case it was chosen from the data ("latest").
    recipe["train_start"] = train_run.data.params[RESOLVED_TRAIN_START_PARAM]
    return build_config(DataConfig, recipe), build_config(SplitConfig, recipe)


def evaluate(config: EvaluateConfig) -> str:
    """Run the evaluate step; return a one-paragraph report."""
    with step_run("evaluate", config.tracking.experiment_name, flatten(config)) as run:
        train_run = find_step_run(config.tracking.experiment_name, "train", config.run_id)
        model_id = train_run.data.tags.get(MODEL_ID_TAG)
        if not model_id:
            raise LineageError(f"train run {train_run.info.run_id} has no {MODEL_ID_TAG} tag")
        mlflow.set_tags({TRAIN_RUN_TAG: train_run.info.run_id, MODEL_ID_TAG: model_id})

        data_config, split_config = train_run_configs(train_run)
        prepared = prepare_data(data_config, split_config)
        expected = train_run.data.params.get(DATA_FINGERPRINT_PARAM)
        if expected != prepared.transactions.fingerprint:
            raise LineageError(
                f"{prepared.transactions.source}: the data changed since train run "
                f"{train_run.info.run_id} (fingerprint {prepared.transactions.fingerprint}, "
                f"trained on {expected}); evaluate needs the same data"
            )
        test = evaluation_window(prepared, data_config, "test")
        label = data_config.columns.label_column
        require_both_classes(test[label], f"{prepared.transactions.source}, test window")

        model = mlflow.pyfunc.load_model(f"models:/{model_id}")
        settings = model.model_config
        features = list(settings["features"])
        candidate = _predict(model, test[features])
        champion = _score_champion(config.model_name, test[features])
        context = _MetricContext(test, data_config, settings["review_cost"])
        columns = list(dict.fromkeys([*features, label, *context.extra_columns]))
        dataset = pandas_dataset(
            test[columns].assign(
                **{
                    PROBABILITY_COLUMN: candidate.probabilities,
                    DECISION_COLUMN: candidate.decisions,
                }
            ),
            prepared.transactions.source,
            name="transactions-test",
            label=label,
            predictions=DECISION_COLUMN,
        )
        figures: dict[str, bytes] = {}
        candidate_result = mlflow.models.evaluate(
            data=dataset,  # names its targets and predictions columns itself
            model_type="classifier",
            model_id=model_id,
            extra_metrics=context.metrics(),
            custom_artifacts=[
                _plot_artifacts(
                    context, candidate, champion, settings, model.unwrap_python_model(), figures
                )
            ],
            evaluator_config=_evaluator_config(TEST_PREFIX, context.col_mapping),
        )
        champion_metrics: dict[str, float] = {}
        if champion is not None and champion.scored is not None:
            champion_result = mlflow.models.evaluate(
                data=dataset.df.assign(
                    **{
                        PROBABILITY_COLUMN: champion.scored.probabilities,
                        DECISION_COLUMN: champion.scored.decisions,
                    }
                ),
                model_type="classifier",
                targets=label,
                predictions=DECISION_COLUMN,
                model_id=champion.model_id,
                extra_metrics=context.metrics(),
                evaluator_config=_evaluator_config(CHAMPION_PREFIX, context.col_mapping),
            )
            champion_metrics = {
                key.removeprefix(CHAMPION_PREFIX): value
                for key, value in champion_result.metrics.items()
            }
        candidate_metrics = {
            key.removeprefix(TEST_PREFIX): value for key, value in candidate_result.metrics.items()
        }
        criteria = check_gate(candidate_result, champion_metrics, config.gate, champion)
        passed = all(criterion.passed for criterion in criteria)
        _record_gate(criteria, passed, champion)
        _log_model_card(
            train_run,
            run,
            model_id,
            prepared,
            settings,
            candidate_metrics,
            champion_metrics,
            champion,
            criteria,
            figures,
        )
        return (
            f"evaluate run {run.info.run_id} of train run {train_run.info.run_id}: "
            + ", ".join(
                f"{name} {candidate_metrics[name]:.4f}"
                for name in RANKING_METRICS
                if name in candidate_metrics
            )
            + (f"; champion v{champion.version}" if champion else "; no champion yet")
            + f"; gate {'passed' if passed else 'failed'}"
        )


def _evaluator_config(prefix: str, col_mapping: dict[str, str]) -> dict:
    return {
        "metric_prefix": prefix,
        "col_mapping": col_mapping,
        "pos_label": 1,
        "label_list": [0, 1],
        "log_model_explainability": False,
    }


def _predict(model: mlflow.pyfunc.PyFuncModel, features: pd.DataFrame) -> Scored:
    output = model.predict(features)
    return Scored(
        output[PROBABILITY_COLUMN].to_numpy(dtype=np.float64),
        output[DECISION_COLUMN].to_numpy(dtype=np.int64),
    )


def _score_champion(model_name: str, features: pd.DataFrame) -> Champion | None:
    """Score the current @champion on the same rows; record why when it cannot be done."""
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except MlflowException as error:
        if not is_absent(error):
            raise  # an outage is not "no champion": the gate would skip the comparison
        mlflow.set_tag(CHAMPION_COMPARISON_TAG, "no champion")
        logger.info("No %s@%s yet: nothing to compare with", model_name, CHAMPION_ALIAS)
        return None
    number = str(version.version)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{model_name}/{number}")
        scored = _predict(model, features[list(model.model_config["features"])])
    except (MlflowException, KeyError) as error:
        if (outage := diagnose(error)) is not None:
            raise OutageError(outage) from error
        # The champion may expect features this data does not have: no comparison is possible,
        # and the gate fails on a missing comparison.
        problem = f"unavailable: {str(error)[:400]}"
        mlflow.set_tags({CHAMPION_VERSION_TAG: number, CHAMPION_COMPARISON_TAG: problem})
        logger.warning("Champion version %s cannot score these rows: %s", number, error)
        return Champion(number, version.model_id, None, problem)
    mlflow.set_tags({CHAMPION_VERSION_TAG: number, CHAMPION_COMPARISON_TAG: "scored"})
    return Champion(number, version.model_id, scored)


class _MetricContext:
    """What the fraud metrics need besides predictions and labels.

    Card, day and amount are columns of the evaluation data, found by MLflow through
    ``col_mapping`` (MLflow first tries each metric on one row, so closures over whole arrays
    would not do).
    """

    def __init__(self, test: pd.DataFrame, data_config: DataConfig, review_cost: float) -> None:
        columns = data_config.columns
        self.labels = test[columns.label_column].to_numpy()
        self.amounts = test[columns.amount_column].to_numpy(dtype=np.float64)
        self.review_cost = float(review_cost)
        self.has_cards = columns.customer_column in test.columns
        self.col_mapping = {"amounts": columns.amount_column}
        self.extra_columns = [columns.amount_column]
        if self.has_cards:
            self.col_mapping |= {"days": DAY_COLUMN, "cards": columns.customer_column}
            self.extra_columns += [DAY_COLUMN, columns.customer_column]

    def metrics(self) -> list:
        """The fraud metrics as MLflow custom metrics (``fraud_probability`` is a data column).

        Every function takes ``predictions`` and ``targets`` first: MLflow reads a two-argument
        function as the legacy (eval_df, metrics) form.
        """
        review_cost = self.review_cost

        def roc_auc(predictions, targets, fraud_probability):
            return float(roc_auc_score(targets, fraud_probability))

        def average_precision(predictions, targets, fraud_probability):
            return float(average_precision_score(targets, fraud_probability))

        def recall_at_1pct_fpr(predictions, targets, fraud_probability):
            return recall_at_false_positive_rate(targets, fraud_probability, 0.01)

        def savings_at_threshold(predictions, targets, amounts):
            return savings(targets, predictions, amounts, review_cost)

        def card_precision_at_100(predictions, targets, fraud_probability, days, cards):
            return card_precision_at_k(days, cards, targets, fraud_probability, CARD_PRECISION_K)

        functions: list[Callable] = [
            roc_auc,
            average_precision,
            recall_at_1pct_fpr,
            savings_at_threshold,
        ]
        if self.has_cards:
            functions.append(card_precision_at_100)
        return [make_metric(eval_fn=f, greater_is_better=True, name=f.__name__) for f in functions]


def _plot_artifacts(
    context: _MetricContext,
    candidate: Scored,
    champion: Champion | None,
    settings: dict,
    python_model,
    figures: dict[str, bytes],
) -> Callable:
    """The custom-artifact function of the candidate's evaluation (the champion drawn beside)."""

    def fraud_plots(eval_df, builtin_metrics, artifacts_dir):
        scores = {"candidate": candidate.probabilities}
        if champion is not None and champion.scored is not None:
            scores[f"champion v{champion.version}"] = champion.scored.probabilities
        thresholds = np.geomspace(1e-4, 1.0, 200)
        curve = {
            name: savings_curve(
                context.labels, values, context.amounts, context.review_cost, thresholds
            )
            for name, values in scores.items()
        }
        drawn = {
            f"{TEST_PREFIX}precision_recall_curve": plots.precision_recall_figure(
                context.labels, scores
            ),
            f"{TEST_PREFIX}roc_curve": plots.roc_figure(context.labels, scores),
            f"{TEST_PREFIX}calibration_curve": plots.calibration_figure(context.labels, scores),
            f"{TEST_PREFIX}savings_vs_threshold": plots.savings_figure(
                thresholds, curve, settings["threshold"]
            ),
            f"{TEST_PREFIX}feature_importance": plots.feature_importance_figure(
                feature_importance(python_model.scorer)
            ),
        }
        figures.update({f"{name}.png": plots.png_bytes(figure) for name, figure in drawn.items()})
        return drawn

    return fraud_plots


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
    mlflow.set_tags({GATE_TAG: "passed" if passed else "failed", GATE_REPORT_TAG: report[:5000]})
    mlflow.log_dict(
        {
            "passed": passed,
            "champion_version": champion.version if champion else None,
            "criteria": [vars(c) for c in criteria],
        },
        GATE_ARTIFACT,
    )
    logger.info("Gate %s: %s", "passed" if passed else "failed", report)


def _log_model_card(
    train_run: Run,
    run: mlflow.ActiveRun,
    model_id: str,
    prepared,
    settings: dict,
    candidate_metrics: dict[str, float],
    champion_metrics: dict[str, float],
    champion: Champion | None,
    criteria: list[Criterion],
    figures: dict[str, bytes],
) -> None:
    split = prepared.split
    described = split.describe()
    names = [
        *RANKING_METRICS,
        "recall_at_1pct_fpr",
        "savings_at_threshold",
        "precision_score",
        "recall_score",
        "f1_score",
    ]
    card = ModelCard(
        title=f"Fraud model {model_id}",
        lineage={
            "model": f"models:/{model_id}",
            "train run": train_run.info.run_id,
            "evaluate run": run.info.run_id,
            "git commit": train_run.data.tags.get("mlflow.source.git.commit", "unknown"),
            "data source": prepared.transactions.source,
            "data fingerprint": prepared.transactions.fingerprint,
        },
        windows={
            name: f"{described[f'{name}_first_day']} .. {described[f'{name}_last_day']}"
            for name in ("validation_train", "validation", "train", "test")
        },
        decision={
            "threshold": f"{settings['threshold']:.6f}",
            "review cost per alert": f"{settings['review_cost']:g}",
            "expected savings on validation": (
                f"{train_run.data.metrics.get('validation_expected_savings', float('nan')):,.0f}"
            ),
        },
        metrics=[
            (name, candidate_metrics[name], champion_metrics.get(name))
            for name in names
            if name in candidate_metrics
        ],
        champion_label=f"champion v{champion.version}" if champion else "no champion",
        gate=[(c.name, c.passed, c.detail) for c in criteria],
        plots=figures,
    )
    mlflow.log_text(to_markdown(card), "model_card.md")
    mlflow.log_text(to_html(card), "model_card.html")
