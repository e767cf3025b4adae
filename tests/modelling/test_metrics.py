import numpy as np
import pytest

from fraud_detection.modelling.metrics import (
    card_precision_at_k,
    fraud_metrics,
)


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


def test_a_blocked_card_stays_out_on_every_later_day():
    # Day 0: card 1 caught. Days 1 and 2: card 1 scores highest again but is blocked, so the
    # top 1 is the genuine card 2 both days.
    days = [0, 0, 1, 1, 2, 2]
    cards = [1, 2, 1, 2, 1, 2]
    labels = [1, 0, 1, 0, 1, 0]
    scores = [0.9, 0.1, 0.9, 0.2, 0.9, 0.3]
    assert card_precision_at_k(days, cards, labels, scores, k=1) == pytest.approx(1 / 3)


def test_the_mean_is_over_days_not_over_cards():
    # Day 0 has 4 cards (2 compromised in the top 2), day 1 has 2 (none compromised):
    # per-day precisions 1.0 and 0.0, mean 0.5 (pooling the cards would give 2/4).
    days = [0, 0, 0, 0, 1, 1]
    cards = [1, 2, 3, 4, 5, 6]
    labels = [1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.6, 0.9, 0.8]
    assert card_precision_at_k(days, cards, labels, scores, k=2) == pytest.approx(0.5)


def test_a_cards_label_is_per_day():
    # Card 1 is genuine on day 0 and compromised on day 1: it counts as a miss on day 0 and a
    # hit on day 1 (it was not blocked, since day 0 found nothing on it).
    days = [0, 1]
    cards = [1, 1]
    labels = [0, 1]
    scores = [0.9, 0.9]
    assert card_precision_at_k(days, cards, labels, scores, k=1) == pytest.approx(0.5)


def test_row_order_does_not_matter():
    rng = np.random.default_rng(3)
    days = rng.integers(0, 5, size=300)
    cards = rng.integers(0, 40, size=300)
    labels = (rng.random(300) < 0.1).astype(int)
    scores = rng.random(300)
    order = rng.permutation(300)
    expected = card_precision_at_k(days, cards, labels, scores, k=5)
    shuffled = card_precision_at_k(days[order], cards[order], labels[order], scores[order], k=5)
    assert shuffled == expected


def _book_card_precision(days, cards, labels, scores, k):
    """The book's definition (section 4.2.3) in plain Python; ties broken by card id, as ours."""
    detected: set[int] = set()
    precisions = []
    for day in sorted(set(days)):
        score_of: dict[int, float] = {}
        label_of: dict[int, int] = {}
        for d, card, label, score in zip(days, cards, labels, scores, strict=True):
            if d == day and card not in detected:
                score_of[card] = max(score_of.get(card, -1.0), score)
                label_of[card] = max(label_of.get(card, 0), label)
        top = sorted(score_of, key=lambda card: (-score_of[card], card))[:k]
        caught = [card for card in top if label_of[card] == 1]
        precisions.append(len(caught) / k)
        detected.update(caught)
    return sum(precisions) / len(precisions)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_books_definition_on_random_days(seed):
    rng = np.random.default_rng(seed)
    n = 2_000
    days = rng.integers(0, 7, size=n).tolist()
    cards = rng.integers(0, 150, size=n).tolist()
    labels = (rng.random(n) < 0.15).astype(int).tolist()
    scores = np.round(rng.random(n), 2).tolist()  # rounded: ties happen and must break by card
    assert card_precision_at_k(days, cards, labels, scores, k=10) == pytest.approx(
        _book_card_precision(days, cards, labels, scores, k=10)
    )


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="k must be at least 1"):
        card_precision_at_k([0], [1], [1], [0.5], k=0)


def test_fraud_metrics_with_and_without_cards():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    metrics = fraud_metrics(labels, scores)
    assert metrics == {"roc_auc": 0.75, "average_precision": pytest.approx(0.8333333)}
    with_cards = fraud_metrics(labels, scores, days=[0, 0, 0, 0], customers=[1, 2, 3, 4])
    assert with_cards["card_precision_at_100"] == pytest.approx(0.02)


def test_a_test_window_of_hours_is_one_evaluation_day_across_midnight():
    """12 hours from 18:00 are one evaluation day (24 hours from the window's start), not the
    ends of two calendar days: card 1's fraud at 20:00 fills the day's top 1."""
    import pandas as pd

    from fraud_detection.config import TransactionColumns
    from fraud_detection.data.schema import DAY_COLUMN
    from fraud_detection.data.split import TimeSplit, TimeWindow, evaluation_rows

    start = pd.Timestamp("2018-04-10 18:00")
    earlier = TimeWindow(start - pd.Timedelta(days=3), start - pd.Timedelta(days=2))
    split = TimeSplit(
        origin=pd.Timestamp("2018-04-01"),
        delay=pd.Timedelta(hours=2),
        whole_days=False,
        validation_train=earlier,
        validation=earlier,
        train=earlier,
        test=TimeWindow(start, start + pd.Timedelta(hours=12)),
    )
    table = pd.DataFrame(
        {
            "TX_DATETIME": start + pd.to_timedelta([2, 8, 9], unit="h"),
            "CUSTOMER_ID": [1, 2, 3],
            "TX_FRAUD": [1, 0, 1],
        }
    )
    rows = evaluation_rows(table, split, "test", TransactionColumns())
    assert rows[DAY_COLUMN].nunique() == 1
    scores = [0.9, 0.8, 0.7]
    assert (
        card_precision_at_k(rows[DAY_COLUMN], rows["CUSTOMER_ID"], rows["TX_FRAUD"], scores, k=1)
        == 1.0
    )
    calendar_days = table["TX_DATETIME"].dt.normalize()
    assert card_precision_at_k(calendar_days, [1, 2, 3], [1, 0, 1], scores, k=1) == 0.5
