"""The state's rules, the same in memory and in a real Redis: retries, time order, unknown
entities, labels and their delay, all-or-nothing requests, pruning, warm start."""

from __future__ import annotations

import pytest

from fraud_detection.online.errors import OrderConflictError, UnknownTransactionError
from fraud_detection.online.features import transaction_features
from fraud_detection.online.requests import Label, RawTransaction
from fraud_detection.online.state import HistoryRow, OnlineState
from tests.support.online import DAY


def tx(id_: int | str, seconds: int, card: int = 1, terminal: int = 1, amount: float = 10.0):
    return RawTransaction(id_, seconds, str(card), str(terminal), amount)


def features_of(state: OnlineState, transaction: RawTransaction) -> dict[str, float]:
    """Record ``transaction`` and return its features (as the service does)."""
    (observation,) = state.record([transaction])
    if observation.duplicate:
        return dict(zip(state.recipe.features, observation.features, strict=True))
    features = transaction_features(
        transaction, observation.card, observation.terminal, state.recipe
    )
    state.remember({transaction.key: tuple(features[n] for n in state.recipe.features)})
    return features


def test_unknown_cards_and_terminals_start_empty(state):
    assert state.is_empty()
    features = features_of(state, tx(1, 1_000, amount=25.0))
    assert features["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1
    assert features["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"] == 25.0
    assert features["CUSTOMER_ID_AMOUNT_RATIO_7DAY_WINDOW"] == 1.0
    assert features["TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 0
    assert features["TERMINAL_ID_RISK_30DAY_WINDOW"] == 0
    assert not state.is_empty()


def test_a_retry_is_counted_once_and_gets_the_same_features(state):
    first = features_of(state, tx(1, 1_000, amount=20.0))
    again = state.record([tx(1, 1_000, amount=20.0)])[0]
    assert again.duplicate
    assert again.features == tuple(first[n] for n in state.recipe.features)
    later = features_of(state, tx(2, 2_000, amount=40.0))
    assert later["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2  # the retry did not count
    assert later["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 30.0


def test_a_retry_with_other_values_is_refused(state):
    features_of(state, tx(1, 1_000, amount=20.0))
    with pytest.raises(OrderConflictError, match=r"transactions\[0\]: this id was recorded"):
        state.record([tx(1, 1_000, amount=21.0)])


def test_out_of_order_is_refused_whole_and_changes_nothing(state):
    features_of(state, tx(1, 5_000, card=1, terminal=1))
    with pytest.raises(OrderConflictError, match=r"transactions\[1\]: earlier than .* its card"):
        state.record([tx(2, 6_000, card=2, terminal=2), tx(3, 4_000, card=1, terminal=3)])
    with pytest.raises(OrderConflictError, match="its terminal; each card and terminal"):
        state.record([tx(4, 4_000, card=9, terminal=1)])
    # Nothing of the refused requests was recorded: card 2 and terminal 3 are still empty.
    features = features_of(state, tx(5, 7_000, card=2, terminal=3))
    assert features["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1
    with pytest.raises(UnknownTransactionError):
        state.feedback([Label(2, 1)])


def test_transactions_at_one_instant_go_by_id(state):
    features_of(state, tx(5, 1_000, card=1, terminal=1))
    with pytest.raises(OrderConflictError):
        state.record([tx(3, 1_000, card=2, terminal=1)])
    assert (
        features_of(state, tx(7, 1_000, card=1, terminal=2))["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2
    )
    # Text ids sort as text, after every integer id.
    assert (
        features_of(state, tx("a", 1_000, card=1, terminal=3))["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 3
    )


def test_a_fraud_label_counts_only_a_delay_after_its_transaction(state):
    delay = state.recipe.delay_seconds
    features_of(state, tx(1, 0, card=1, terminal=7))
    state.feedback([Label(1, 1)])
    before = features_of(state, tx(2, delay - 1, card=2, terminal=7))
    assert before["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 0
    at_delay = features_of(state, tx(3, delay, card=3, terminal=7))
    assert at_delay["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 1
    assert at_delay["TERMINAL_ID_RISK_1DAY_WINDOW"] == 1.0
    state.feedback([Label(2, 0), Label(1, 0)])  # labels can be corrected
    after = features_of(state, tx(4, delay + 5, card=4, terminal=7))
    assert after["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 1
    assert after["TERMINAL_ID_RISK_1DAY_WINDOW"] == 0
    week = features_of(state, tx(5, 2 * delay, card=5, terminal=7))
    # (0, delay]: ids 2 and 3; id 1 (at 0) has just left, id 4 is not a delay old yet.
    assert week["TERMINAL_ID_NB_TX_7DAY_WINDOW"] == 2


def test_feedback_for_an_unknown_id_changes_nothing(state):
    delay = state.recipe.delay_seconds
    features_of(state, tx(1, 0, terminal=7))
    with pytest.raises(UnknownTransactionError, match=r"labels\[1\]: no such transaction"):
        state.feedback([Label(1, 1), Label(99, 1)])
    later = features_of(state, tx(2, delay + 1, card=2, terminal=7))
    assert later["TERMINAL_ID_RISK_1DAY_WINDOW"] == 0  # the label of id 1 was not recorded


def test_entries_out_of_reach_are_pruned(state):
    features_of(state, tx(1, 0, card=1, terminal=1))
    features_of(state, tx(2, 1, card=2, terminal=1))
    reach = state.recipe.terminal_lookback
    later = features_of(state, tx(3, reach, card=1, terminal=1))
    assert later["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 1
    with pytest.raises(UnknownTransactionError):
        state.feedback([Label(1, 1)])  # expired: out of every window now
    state.feedback([Label(2, 1)])  # one second younger: still within reach
    # A retry of the expired id is a new transaction, and older than the card's latest.
    with pytest.raises(OrderConflictError):
        state.record([tx(1, 0, card=1, terminal=1)])


def test_a_warm_start_is_counted_and_its_ids_answer_retries(state):
    rows = [
        HistoryRow(tx(1, 0, amount=5.0), label=1, features=(1.0,) * 18),
        HistoryRow(tx(2, 10, amount=7.0), label=None, features=(2.0,) * 18),
    ]
    assert state.load(rows) == 2
    assert state.record([tx(2, 10, amount=7.0)])[0].features == (2.0,) * 18
    features = features_of(state, tx(3, 7 * DAY + 5, card=1))
    assert features["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 3
    assert features["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 1
    assert features["TERMINAL_ID_RISK_1DAY_WINDOW"] == 1.0


def test_requests_recorded_together_keep_their_order_and_each_is_all_or_nothing(state):
    first, late, third = [tx(1, 5_000)], [tx(2, 4_000, terminal=2)], [tx(3, 6_000, terminal=3)]
    answers = state.record_many([first, late, third])
    assert isinstance(answers[1], OrderConflictError)  # earlier than request 1 on its card
    assert [o.transaction.id for o in answers[0]] == [1]
    assert [o.transaction.id for o in answers[2]] == [3]
    assert [entry[0] for entry in answers[2][0].card] == [5_000]  # saw the first, not the late
    assert state.record([tx(2, 7_000, terminal=2)])[0].card[-1][0] == 6_000


def test_features_kept_for_retries_are_read_at_once_and_reach_another_worker(state, recipe):
    features = features_of(state, tx(1, 1_000, amount=20.0))
    expected = tuple(features[n] for n in recipe.features)
    assert state.recorded_features(tx(1, 1_000).key) == expected
    if not state.remote:
        return
    from fraud_detection.online.redis_state import RedisState

    state.close()  # writes what is queued
    other = RedisState(state.url, recipe)
    assert other.recorded_features(tx(1, 1_000).key) == expected
    assert other.record([tx(1, 1_000, amount=20.0)])[0].features == expected
    other.close()
