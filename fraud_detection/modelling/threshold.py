"""Choose the decision threshold that saves the most money on validation data.

An alert costs a review (``review_cost``); a caught fraud saves its amount. scikit-learn's
``TunedThresholdClassifierCV`` searches the thresholds of an already fitted classifier
(``cv="prefit"``) for the best business score, the amounts reaching the scorer through
scikit-learn's metadata routing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import sklearn
from sklearn.metrics import make_scorer
from sklearn.model_selection import TunedThresholdClassifierCV

from fraud_detection.modelling.metrics import savings

# Candidate thresholds: quantiles of the validation scores, so that they are dense where the
# scores are (near 0 for a rare class) instead of evenly spaced on [0, 1].
N_CANDIDATE_THRESHOLDS = 400


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    expected_savings: float  # on the validation rows, at ``threshold``
    thresholds: np.ndarray  # the candidates tried ...
    savings: np.ndarray  # ... and their savings, for the record


def _savings_score(
    y_true: np.ndarray, y_pred: np.ndarray, amount: np.ndarray, review_cost: float
) -> float:
    return savings(y_true, y_pred, amount, review_cost)


def tune_threshold(
    estimator: Any,
    X: np.ndarray,
    labels: np.ndarray,
    amounts: np.ndarray,
    review_cost: float,
) -> ThresholdChoice:
    """Best threshold of a fitted classifier on validation rows ``X``.

    Args:
        estimator: A fitted scikit-learn classifier (``predict_proba``).
        X: Validation features.
        labels: Validation labels.
        amounts: Transaction amounts (what a caught fraud saves).
        review_cost: Cost of one alert.
    """
    scores = estimator.predict_proba(X)[:, 1]
    candidates = np.unique(np.quantile(scores, np.linspace(0, 1, N_CANDIDATE_THRESHOLDS)))
    with sklearn.config_context(enable_metadata_routing=True):
        scorer = make_scorer(_savings_score, review_cost=review_cost).set_score_request(amount=True)
        tuned = TunedThresholdClassifierCV(
            estimator,
            scoring=scorer,
            thresholds=candidates,
            cv="prefit",
            refit=False,
            store_cv_results=True,
        )
        tuned.fit(X, labels, amount=np.asarray(amounts, dtype=np.float64))
    return ThresholdChoice(
        threshold=float(tuned.best_threshold_),
        expected_savings=float(tuned.best_score_),
        thresholds=np.asarray(tuned.cv_results_["thresholds"]),
        savings=np.asarray(tuned.cv_results_["scores"]),
    )
