"""Scoring and measuring the test window, for the evaluate step, on the pandas engine.

What the evaluate step hands an engine (``ModelUnderTest``, ``ChampionVersion``) and what it
gets back (``WindowEvaluation``), shared by both engines; and the pandas engine's evaluation:
``mlflow.models.evaluate`` of the candidate's and the champion's predictions on the same rows
(the standard classifier metrics and the confusion matrix at the model's threshold, the fraud
metrics as custom metrics, the plots as custom artifacts), linked to each model's id.
The Spark engine's twin is ``spark.evaluation``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.exceptions import MlflowException
from mlflow.models import EvaluationResult, make_metric
from sklearn.metrics import average_precision_score, roc_auc_score

from fraud_detection import contract
from fraud_detection.config import DataConfig
from fraud_detection.contract import CHAMPION_PREFIX, TEST_PREFIX
from fraud_detection.data.schema import DAY_COLUMN
from fraud_detection.errors import DataError, OutageError
from fraud_detection.hardening.datasets import pandas_dataset
from fraud_detection.hardening.outages import diagnose
from fraud_detection.modelling.estimators import ExplanationError, feature_importance
from fraud_detection.modelling.metrics import (
    CARD_PRECISION_K,
    card_precision_at_k,
    recall_at_false_positive_rate,
    savings,
    savings_curve,
)
from fraud_detection.modelling.pyfunc import DECISION_COLUMN, PROBABILITY_COLUMN
from fraud_detection.monitoring.reference import ScoreReference, score_reference

logger = logging.getLogger(__name__)

# The model's outputs, as columns of the evaluation frame: named apart from any column of the
# user's data (a label column called is_fraud, the model's own decision column, is common).
SCORE_COLUMN = "__model_fraud_probability__"
DECISION_EVALUATED = "__model_decision__"
FEATURE_IMPORTANCE_PLOT = f"{TEST_PREFIX}feature_importance"
MEAN_CONTRIBUTION_PLOT = f"{TEST_PREFIX}mean_abs_contribution"


@dataclass(frozen=True)
class Scored:
    """A model's output on the test rows: arrays on the pandas engine, the names of the
    scored frame's columns on the Spark engine (the rows stay there)."""

    probabilities: Any
    decisions: Any


@dataclass(frozen=True)
class Champion:
    version: str
    model_id: str | None
    scored: Scored | None  # None: it could not score these rows (see problem)
    problem: str = ""


@dataclass(frozen=True)
class ModelUnderTest:
    """The candidate: its logged model, loaded on the driver for its settings and importance."""

    model_id: str
    model: mlflow.pyfunc.PyFuncModel

    @property
    def uri(self) -> str:
        return f"models:/{self.model_id}"

    @property
    def settings(self) -> dict:
        return self.model.model_config

    @property
    def features(self) -> list[str]:
        return list(self.settings["features"])

    @classmethod
    def load(cls, model_id: str) -> ModelUnderTest:
        return cls(model_id, mlflow.pyfunc.load_model(f"models:/{model_id}"))


@dataclass(frozen=True)
class ChampionVersion:
    """The registered version that holds @champion, to be scored on the same rows."""

    model_name: str
    version: str
    model_id: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"


@dataclass(frozen=True)
class WindowEvaluation:
    """What an engine measured on the test window, for the gate and the model card."""

    candidate: EvaluationResult  # metrics named ``test_*``
    champion_metrics: dict[str, float]  # unprefixed; empty without a champion that scored
    champion: Champion | None
    figures: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG
    plots_note: str = ""  # what the card says about plots not drawn
    # Mean |contribution| per feature on the test rows, largest first (empty: a model kind
    # without contributions).
    contributions: list[tuple[str, float]] = field(default_factory=list)
    # The candidate's score bins and alert rate on the whole test window: the monitor's
    # out-of-sample reference (``monitoring.reference``).
    score_reference: ScoreReference | None = None


def score_champion(
    champion: ChampionVersion, score: Callable[[mlflow.pyfunc.PyFuncModel, list[str]], Scored]
) -> Champion:
    """``champion`` scored by ``score(model, its features)``; when it cannot score these rows,
    a ``Champion`` that says why (tagged on the run), and the gate fails on the comparison."""
    number = champion.version
    try:
        model = mlflow.pyfunc.load_model(champion.uri)
        scored = score(model, list(model.model_config["features"]))
    except (MlflowException, KeyError, DataError) as error:
        if (outage := diagnose(error)) is not None:
            raise OutageError(outage) from error
        # The champion may expect features this data does not have: no comparison is possible,
        # and the gate fails on a missing comparison.
        problem = f"unavailable: {str(error)[:400]}"
        mlflow.set_tags(
            {contract.CHAMPION_VERSION_TAG: number, contract.CHAMPION_COMPARISON_TAG: problem}
        )
        logger.warning("Champion version %s cannot score these rows: %s", number, error)
        return Champion(number, champion.model_id, None, problem)
    mlflow.set_tags(
        {contract.CHAMPION_VERSION_TAG: number, contract.CHAMPION_COMPARISON_TAG: "scored"}
    )
    return Champion(number, champion.model_id, scored)


def feature_importance_plot(candidate: ModelUnderTest) -> tuple[str, Any]:
    """The candidate's feature-importance figure and its artifact name (no rows needed)."""
    from fraud_detection.reporting import plots  # matplotlib: only where something is drawn

    figure = plots.feature_importance_figure(
        feature_importance(candidate.model.unwrap_python_model().scorer)
    )
    return FEATURE_IMPORTANCE_PLOT, figure


def mean_contributions(candidate: ModelUnderTest, inputs: pd.DataFrame) -> pd.Series:
    """Each feature's mean absolute contribution to the candidate's margin (log-odds) over
    ``inputs``, the global view of its reason codes, ascending; empty for a model kind
    without per-feature contributions."""
    scorer = candidate.model.unwrap_python_model().scorer
    try:
        contributions, _ = scorer.contributions_values(
            inputs[list(scorer.features)].to_numpy(np.float64)
        )
    except ExplanationError:
        return pd.Series(dtype=float)
    means = np.abs(contributions).mean(axis=0) if len(inputs) else np.zeros(len(scorer.features))
    return pd.Series(means, index=list(scorer.features), dtype=float).sort_values()


def unprefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {key.removeprefix(prefix): value for key, value in metrics.items()}


def evaluate_on_pandas(
    rows: pd.DataFrame,
    source: str,
    data_config: DataConfig,
    candidate: ModelUnderTest,
    champion_version: ChampionVersion | None,
) -> WindowEvaluation:
    """The candidate and the champion evaluated on ``rows`` by ``mlflow.models.evaluate``."""
    settings, features = candidate.settings, candidate.features
    inputs = rows[features]
    scored = _predict(candidate.model, inputs)
    champion = None
    if champion_version is not None:  # from the candidate's feature columns (KeyError if not)
        champion = score_champion(
            champion_version, lambda model, wanted: _predict(model, inputs[wanted])
        )
    context = _MetricContext(rows, data_config, settings["review_cost"])
    dataset = _test_dataset(rows, source, data_config, features, context, scored)
    figures: dict[str, bytes] = {}
    means = mean_contributions(candidate, inputs)
    plot = _plot_artifacts(context, scored, champion, settings, candidate, figures, means)
    result = _evaluate_predictions(dataset, candidate.model_id, TEST_PREFIX, context, plot=plot)
    champion_metrics = _evaluate_champion(dataset.df, champion, context)
    largest_first = [(str(name), float(value)) for name, value in means[::-1].items()]
    return WindowEvaluation(
        result, champion_metrics, champion, figures, contributions=largest_first
    )


def score_reference_on_pandas(rows: pd.DataFrame, candidate: ModelUnderTest) -> ScoreReference:
    """The candidate's score bins and alert rate on ``rows`` (``monitoring.reference``)."""
    scored = _predict(candidate.model, rows[candidate.features])
    return score_reference(scored.probabilities, candidate.settings["threshold"])


def _test_dataset(
    rows: pd.DataFrame,
    source: str,
    data_config: DataConfig,
    features: list[str],
    context: _MetricContext,
    candidate: Scored,
) -> PandasDataset:
    """The test rows with the candidate's predictions, as the MLflow dataset evaluated."""
    label = data_config.columns.label_column
    columns = list(dict.fromkeys([*features, label, *context.extra_columns]))
    return pandas_dataset(
        rows[columns].assign(
            **{SCORE_COLUMN: candidate.probabilities, DECISION_EVALUATED: candidate.decisions}
        ),
        source,
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
    return unprefixed(result.metrics, CHAMPION_PREFIX)


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
    model: ModelUnderTest,
    figures: dict[str, bytes],
    contributions: pd.Series,
) -> Callable:
    """The custom-artifact function of the candidate's evaluation (the champion drawn beside)."""

    def fraud_plots(eval_df, builtin_metrics, artifacts_dir):
        from fraud_detection.reporting import plots  # matplotlib: only where something is drawn

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
        }
        name, figure = feature_importance_plot(model)
        drawn[name] = figure
        drawn[MEAN_CONTRIBUTION_PLOT] = plots.mean_contribution_figure(contributions)
        # Each figure is rendered once: MLflow logs the PNG file it is handed as it is (a
        # Figure it would render again; drawing took a third of evaluate on small data).
        rendered = {}
        for name, figure in drawn.items():
            figures[f"{name}.png"] = plots.png_bytes(figure)
            rendered[name] = Path(artifacts_dir) / f"{name}.png"
            rendered[name].write_bytes(figures[f"{name}.png"])
        return rendered

    return fraud_plots
