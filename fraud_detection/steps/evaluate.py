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

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.models import EvaluationResult, MetricThreshold, make_metric
from mlflow.models.evaluation.validation import ModelValidationFailedException
from mlflow.tracking import MlflowClient
from sklearn.metrics import average_precision_score, roc_auc_score

from fraud_detection import contract
from fraud_detection.config import CHAMPION_ALIAS, DataConfig, EvaluateConfig, GateConfig
from fraud_detection.config.fields import flatten
from fraud_detection.contract import (
    CHAMPION_PREFIX,
    TEST_PREFIX,
    Evaluation,
    Step,
    TrainedModel,
)
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.engine import Engine, TestData, engine_for
from fraud_detection.errors import LineageError, OutageError
from fraud_detection.hardening.datasets import pandas_dataset
from fraud_detection.hardening.outages import diagnose
from fraud_detection.hardening.registry_change import version_by_alias
from fraud_detection.modelling.estimators import feature_importance
from fraud_detection.modelling.metrics import (
    CARD_PRECISION_K,
    RANKING_METRICS,
    card_precision_at_k,
    recall_at_false_positive_rate,
    savings,
    savings_curve,
)
from fraud_detection.modelling.pyfunc import DECISION_COLUMN, PROBABILITY_COLUMN
from fraud_detection.reporting import plots
from fraud_detection.reporting.model_card import ModelCard, to_html, to_markdown
from fraud_detection.tracking import find_step_run, step_run

logger = logging.getLogger(__name__)

# The model's outputs, as columns of the evaluation frame: named apart from any column of the
# user's data (a label column called is_fraud, the model's own decision column, is common).
SCORE_COLUMN = "__model_fraud_probability__"
DECISION_EVALUATED = "__model_decision__"
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


@dataclass(frozen=True)
class TestWindow:
    """The rows a train run's model has never seen, rebuilt from its data recipe."""

    data: TestData  # source, fingerprint, split and the rows
    data_config: DataConfig

    @property
    def rows(self) -> pd.DataFrame:
        return self.data.rows


def evaluate(config: EvaluateConfig) -> str:
    """Run the evaluate step; return a one-paragraph report."""
    experiment = config.tracking.experiment_name
    with step_run(Step.EVALUATE, experiment, flatten(config)) as run:
        train_run = find_step_run(experiment, Step.TRAIN, config.run_id)
        trained = TrainedModel.of(train_run)
        mlflow.set_tags(Evaluation.lineage_tags(trained.run_id, trained.model_id))
        test = rebuild_test_window(train_run, trained, engine_for(config.engine))

        model = mlflow.pyfunc.load_model(f"models:/{trained.model_id}")
        settings = model.model_config
        features = list(settings["features"])
        candidate = _predict(model, test.rows[features])
        champion = _score_champion(config.model_name, test.rows[features])
        context = _MetricContext(test.rows, test.data_config, settings["review_cost"])
        dataset = _test_dataset(test, features, context, candidate)

        figures: dict[str, bytes] = {}
        plot = _plot_artifacts(
            context, candidate, champion, settings, model.unwrap_python_model(), figures
        )
        candidate_result = _evaluate_predictions(
            dataset, trained.model_id, TEST_PREFIX, context, plot=plot
        )
        champion_metrics = _evaluate_champion(dataset.df, champion, context)
        criteria = check_gate(candidate_result, champion_metrics, config.gate, champion)
        passed = all(criterion.passed for criterion in criteria)
        _record_gate(criteria, passed, champion)
        candidate_metrics = _unprefixed(candidate_result.metrics, TEST_PREFIX)
        _log_model_card(
            _model_card(
                trained,
                run,
                test,
                settings,
                candidate_metrics,
                champion_metrics,
                champion,
                criteria,
                figures,
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


def _test_dataset(
    test: TestWindow, features: list[str], context: _MetricContext, candidate: Scored
) -> PandasDataset:
    """The test rows with the candidate's predictions, as the MLflow dataset evaluated."""
    label = test.data_config.columns.label_column
    columns = list(dict.fromkeys([*features, label, *context.extra_columns]))
    return pandas_dataset(
        test.rows[columns].assign(
            **{SCORE_COLUMN: candidate.probabilities, DECISION_EVALUATED: candidate.decisions}
        ),
        test.data.source,
        name="transactions-test",
        label=label,
        predictions=DECISION_EVALUATED,
    )


def _evaluate_predictions(
    data: PandasDataset | pd.DataFrame,
    model_id: str | None,
    prefix: str,
    context: _MetricContext,
    plot: Callable | None = None,
) -> EvaluationResult:
    """``mlflow.models.evaluate`` of the predictions in ``data``, metrics named ``prefix*``.

    ``data`` is the test dataset (which names its targets and predictions columns) or a frame
    of the same rows with another model's predictions.
    """
    columns = (
        {}
        if isinstance(data, PandasDataset)
        else {"targets": context.label, "predictions": DECISION_EVALUATED}
    )
    with _without_model_type_hint():
        return mlflow.models.evaluate(
            data=data,
            model_type="classifier",
            **columns,
            model_id=model_id,
            extra_metrics=context.metrics(),
            custom_artifacts=[plot] if plot else None,
            evaluator_config=_evaluator_config(prefix, context.col_mapping),
        )


class _ModelTypeHintFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "the model type looks like None" not in record.getMessage()


@contextlib.contextmanager
def _without_model_type_hint() -> Iterator[None]:
    """Drop MLflow's one warning that our 0/1 labels make the model type "look like None".

    MLflow 3.17's classifier evaluator takes only category, string and boolean label columns
    for classification labels; integer 0/1 labels, the usual binary encoding and this
    template's, read as neither, and every evaluation warned (a user can do nothing about it).
    """
    hint = _ModelTypeHintFilter()
    evaluator_logger = logging.getLogger("mlflow.models.evaluation.evaluators.classifier")
    evaluator_logger.addFilter(hint)
    try:
        yield
    finally:
        evaluator_logger.removeFilter(hint)


def _evaluate_champion(
    frame: pd.DataFrame, champion: Champion | None, context: _MetricContext
) -> dict[str, float]:
    """The champion's test metrics on the same rows (empty without a champion that scored)."""
    if champion is None or champion.scored is None:
        return {}
    result = _evaluate_predictions(
        frame.assign(
            **{
                SCORE_COLUMN: champion.scored.probabilities,
                DECISION_EVALUATED: champion.scored.decisions,
            }
        ),
        champion.model_id,
        CHAMPION_PREFIX,
        context,
    )
    return _unprefixed(result.metrics, CHAMPION_PREFIX)


def _unprefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {key.removeprefix(prefix): value for key, value in metrics.items()}


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
    # An outage is raised, not read as "no champion": the gate would skip the comparison.
    version = version_by_alias(MlflowClient(), model_name, CHAMPION_ALIAS)
    if version is None:
        mlflow.set_tag(contract.CHAMPION_COMPARISON_TAG, "no champion")
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
        mlflow.set_tags(
            {contract.CHAMPION_VERSION_TAG: number, contract.CHAMPION_COMPARISON_TAG: problem}
        )
        logger.warning("Champion version %s cannot score these rows: %s", number, error)
        return Champion(number, version.model_id, None, problem)
    mlflow.set_tags(
        {contract.CHAMPION_VERSION_TAG: number, contract.CHAMPION_COMPARISON_TAG: "scored"}
    )
    return Champion(number, version.model_id, scored)


def _one_class(targets: pd.Series) -> bool:
    return pd.Series(targets).nunique() < 2


class _MetricContext:
    """What the fraud metrics need besides predictions and labels.

    Card, day and amount are columns of the evaluation data, found by MLflow through
    ``col_mapping`` (MLflow first tries each metric on one row, so closures over whole arrays
    would not do).
    """

    def __init__(self, test: pd.DataFrame, data_config: DataConfig, review_cost: float) -> None:
        columns = data_config.columns
        self.label = columns.label_column
        self.labels = test[columns.label_column].to_numpy()
        self.amounts = test[columns.amount_column].to_numpy(dtype=np.float64)
        self.review_cost = float(review_cost)
        self.has_cards = columns.customer_column in test.columns
        self.col_mapping = {"amounts": columns.amount_column, "fraud_probability": SCORE_COLUMN}
        self.extra_columns = [columns.amount_column]
        if self.has_cards:
            self.col_mapping |= {"days": DAY_COLUMN, "cards": columns.customer_column}
            self.extra_columns += [DAY_COLUMN, columns.customer_column]

    def metrics(self) -> list:
        """The fraud metrics as MLflow custom metrics (``fraud_probability`` comes by col_mapping).

        Every function takes ``predictions`` and ``targets`` first: MLflow reads a two-argument
        function as the legacy (eval_df, metrics) form.
        """
        review_cost = self.review_cost

        # MLflow first tries each metric on the first row alone: with one class the ranking
        # metrics are undefined, and scikit-learn would warn about it on every run.
        def roc_auc(predictions, targets, fraud_probability):
            if _one_class(targets):
                return float("nan")
            return float(roc_auc_score(targets, fraud_probability))

        def average_precision(predictions, targets, fraud_probability):
            if _one_class(targets):
                return float("nan")
            return float(average_precision_score(targets, fraud_probability))

        def recall_at_1pct_fpr(predictions, targets, fraud_probability):
            if _one_class(targets):
                return float("nan")
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
    champion_metrics: dict[str, float],
    champion: Champion | None,
    criteria: list[Criterion],
    figures: dict[str, bytes],
) -> ModelCard:
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
        plots=figures,
    )


def _log_model_card(card: ModelCard) -> None:
    mlflow.log_text(to_markdown(card), contract.MODEL_CARD_MARKDOWN)
    mlflow.log_text(to_html(card), contract.MODEL_CARD_HTML)
