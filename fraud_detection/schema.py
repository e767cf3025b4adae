"""Names of the transaction table's columns: the simulator's names are the defaults.

A fork whose data uses other names passes them as parameters (``--label-column`` and friends);
everything else in the package reads the names from a ``TransactionColumns`` instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TransactionColumns:
    """Where each role lives in the transaction table."""

    label_column: str = field(default="TX_FRAUD", metadata={"help": "0/1 fraud label column."})
    timestamp_column: str = field(
        default="TX_DATETIME",
        metadata={"help": "Transaction time column: dates, or numbers of seconds."},
    )
    customer_column: str = field(
        default="CUSTOMER_ID", metadata={"help": "Card (customer) id column."}
    )
    terminal_column: str = field(default="TERMINAL_ID", metadata={"help": "Terminal id column."})
    amount_column: str = field(default="TX_AMOUNT", metadata={"help": "Amount column."})
    id_column: str = field(
        default="TRANSACTION_ID", metadata={"help": "Transaction id column (optional)."}
    )


# Derived column the pipeline adds next to the raw ones (day index); never a model feature.
DAY_COLUMN = "TX_TIME_DAYS"
