"""A table shaped like the public credit-card data sets most people try first: ``Time`` in
seconds from the first transaction over 48 hours, anonymised numeric columns ``V1..V28``,
``Amount`` and a 0/1 ``Class``; no card or terminal id.

Nothing is downloaded: the values are synthetic (seeded), with frauds that a model can tell
apart from a few shifted ``V`` columns and larger amounts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

V_COLUMNS = tuple(f"V{index}" for index in range(1, 29))
FEATURE_COLUMNS = (*V_COLUMNS, "Amount")
LAST_SECOND = 172_792  # as in the best-known of these tables: 48 hours less 8 seconds
# The pipeline's parameters for such a table: its columns, and hour windows that fit 48 hours
# (16h of training, 2h for labels to arrive, 12h of test; validation before, same shape).
PARAMETERS = {
    "feature_columns": ",".join(FEATURE_COLUMNS),
    "label_column": "Class",
    "timestamp_column": "Time",
    "amount_column": "Amount",
    "train_days": "16h",
    "delay_days": "2h",
    "test_days": "12h",
}


def credit_card_table(rows: int = 20_000, fraud_rate: float = 0.01, seed: int = 0) -> pd.DataFrame:
    """``rows`` transactions over 48 hours, sorted by ``Time`` (a float of whole seconds)."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, LAST_SECOND + 1, size=rows))
    seconds[0], seconds[-1] = 0, LAST_SECOND
    fraud = rng.random(rows) < fraud_rate
    values = rng.normal(size=(rows, len(V_COLUMNS)))
    values[fraud, :4] += rng.normal(2.5, 0.5, size=(int(fraud.sum()), 4))
    amount = np.round(rng.lognormal(3.0, 1.0, size=rows) * np.where(fraud, 2.0, 1.0), 2)
    table = pd.DataFrame(values, columns=list(V_COLUMNS))
    table.insert(0, "Time", seconds.astype(np.float64))
    table["Amount"] = amount
    table["Class"] = fraud.astype(np.int64)
    return table
