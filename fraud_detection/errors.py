"""Errors a user can cause. Each message names the file, column, run or model and the problem.

The root scripts print these as one line and exit non-zero; anything else is a bug and keeps its
stack trace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fraud_detection.hardening.outages import Outage

# MLflow's error codes for "there is no such run, model, version or alias".
_ABSENT_CODES = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


class PipelineError(Exception):
    """Base class of the errors a user can cause and fix."""


class DataError(PipelineError):
    """The transaction data is missing, unreadable or does not fit the expected schema."""


class LineageError(PipelineError):
    """A step cannot find (or trust) the runs, models or aliases it builds on."""


class PromotionConflictError(PipelineError):
    """Another writer moved a registry alias while this step was deciding."""


class OutageError(PipelineError):
    """The tracking server, its database or its artifact store is unavailable (``outage``)."""

    def __init__(self, outage: Outage, message: str | None = None) -> None:
        super().__init__(message or outage.describe())
        self.outage = outage


def is_absent(error: BaseException) -> bool:
    """Whether an ``MlflowException`` says the thing asked for does not exist.

    MLflow answers a missing run, model or version with RESOURCE_DOES_NOT_EXIST and a missing
    alias with INVALID_PARAMETER_VALUE; an outage carries neither, so it is never read as
    "absent".
    """
    return getattr(error, "error_code", None) in _ABSENT_CODES


class ThresholdCrossedError(PipelineError):
    """A monitoring threshold was crossed: not a crash, so it has an exit code of its own."""

    exit_code = 3
