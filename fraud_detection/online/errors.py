"""What the online routes refuse, each with its HTTP status and a one-line message."""

from __future__ import annotations

from fraud_detection.errors import PipelineError


class OnlineError(PipelineError):
    """A raw-transaction or feedback request the service refuses (nothing was recorded)."""

    status = 400
    code = "BAD_REQUEST"


class InvalidRequestError(OnlineError):
    """The body does not fit the route: a field missing, of the wrong type or out of range."""


class OrderConflictError(OnlineError):
    """A transaction breaks the time-order rule, or an id comes back with other values."""

    status = 409
    code = "CONFLICT"


class UnknownTransactionError(OnlineError):
    """Feedback names a transaction the state does not hold (never scored, or expired)."""

    status = 404
    code = "NOT_FOUND"


class NotServableError(OnlineError):
    """The model being served cannot score raw transactions with this state."""

    status = 409
    code = "NOT_SERVABLE"
