"""Columns the pipeline adds to a transaction table, beside the user's own.

Which column holds what (label, time, card, terminal, amount, id) is configuration
(``config.TransactionColumns``); this module names what the pipeline derives.
"""

from __future__ import annotations

# Days since the data's first day (day 0 starts at its midnight); never a model feature.
DAY_COLUMN = "TX_TIME_DAYS"
