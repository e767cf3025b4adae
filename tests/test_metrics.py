import numpy as np
import pytest

from fraud_detection.metrics import best_f1_threshold, card_precision_at_k, fraud_metrics


def test_card_precision_counts_cards_not_transactions():
    # One day, three cards; card 1 has two fraud transactions. Top 2 cards: 1 and 2.
    days = [0, 0, 0, 0]
    cards = [1, 1, 2, 3]
    labels = [1, 1, 0, 1]
    scores = [0.9, 0.8, 0.7, 0.1]
    assert card_precision_at_k(days, cards, labels, scores, k=2) == 0.5


def test_card_score_and_label_are_the_maximum_over_the_day():
    # Card 2's genuine low score is ignored: its fraud transaction scores 0.95.
    days = [0, 0, 0]
    cards = [1, 2, 2]
    labels = [0, 0, 1]
    scores = [0.9, 0.1, 0.95]
    assert card_precision_at_k(days, cards, labels, scores, k=1) == 1.0


def test_precision_divides_by_k_even_when_fewer_cards_remain():
    assert card_precision_at_k([0, 0], [1, 2], [1, 0], [0.9, 0.1], k=100) == 0.01


def test_cards_detected_on_earlier_days_are_left_out():
    # Day 0: card 1 is fraud and in the top 1 -> blocked. Day 1: without removal card 1 would
    # again take the top spot; with removal, card 2 (genuine) does.
    days = [0, 0, 1, 1]
    cards = [1, 2, 1, 2]
    labels = [1, 0, 1, 0]
    scores = [0.9, 0.1, 0.9, 0.5]
    assert card_precision_at_k(days, cards, labels, scores, k=1) == pytest.approx((1.0 + 0.0) / 2)


def test_cards_missed_in_the_top_k_are_not_removed():
    days = [0, 0, 1]
    cards = [1, 2, 2]
    labels = [0, 1, 1]
    scores = [0.9, 0.1, 0.9]
    # Day 0: top 1 is card 1 (genuine), card 2's fraud is missed and stays in play on day 1.
    assert card_precision_at_k(days, cards, labels, scores, k=1) == pytest.approx(0.5)


def test_ties_are_broken_by_card_id():
    assert card_precision_at_k([0, 0], [2, 1], [1, 0], [0.5, 0.5], k=1) == 0.0
    assert card_precision_at_k([0, 0], [1, 2], [1, 0], [0.5, 0.5], k=1) == 1.0


def test_fraud_metrics_with_and_without_cards():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    metrics = fraud_metrics(labels, scores)
    assert metrics == {"roc_auc": 0.75, "average_precision": pytest.approx(0.8333333)}
    with_cards = fraud_metrics(labels, scores, days=[0, 0, 0, 0], customers=[1, 2, 3, 4])
    assert with_cards["card_precision_at_100"] == pytest.approx(0.02)


def test_best_f1_threshold():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.7, 0.9])
    assert best_f1_threshold(labels, scores) == 0.7
