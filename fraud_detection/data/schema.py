"""Columns the pipeline adds to a transaction table, beside the user's own.

Which column holds what (label, time, card, terminal, amount, id) is configuration
(``config.TransactionColumns``); this module names what the pipeline derives.
"""

from __future__ import annotations

# Whole days since the data's first midnight (``validation``); in the rows of an evaluated
# window, the row's evaluation day (``split.evaluation_rows``): what card precision@100 is
# computed per. Never a model feature.
DAY_COLUMN = "TX_TIME_DAYS"
