"""The model card's reason-code section: the numbers, or why there are none."""

from fraud_detection.reporting.model_card import (
    CONTRIBUTIONS_MISSING,
    CONTRIBUTIONS_TITLE,
    ModelCard,
    to_html,
    to_markdown,
)


def _card(**changes) -> ModelCard:
    fields = {
        "title": "card",
        "lineage": {},
        "windows": {},
        "decision": {},
        "metrics": [],
        "champion_label": "no champion",
        "gate": [],
    }
    return ModelCard(**{**fields, **changes})


def test_the_card_lists_mean_contributions_in_the_order_given():
    card = _card(contributions=[("TX_AMOUNT", 1.25), ("TX_DURING_NIGHT", 0.125)])
    markdown = to_markdown(card)
    section = markdown.split(f"## {CONTRIBUTIONS_TITLE}")[1].split("## Plots")[0]
    assert "| TX_AMOUNT | 1.2500 |\n| TX_DURING_NIGHT | 0.1250 |" in section
    assert CONTRIBUTIONS_MISSING not in markdown
    html = to_html(card)
    assert "<tr><td>TX_AMOUNT</td><td>1.2500</td></tr>" in html


def test_a_card_without_contributions_says_why():
    card = _card()
    assert CONTRIBUTIONS_MISSING in to_markdown(card)
    assert CONTRIBUTIONS_MISSING in to_html(card)
