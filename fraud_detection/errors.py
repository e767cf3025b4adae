"""Errors a user can cause. Each message names the file, column, run or model and the problem.

The root scripts print these as one line and exit non-zero; anything else is a bug and keeps its
stack trace.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of the errors a user can cause and fix."""


class DataError(PipelineError):
    """The transaction data is missing, unreadable or does not fit the expected schema."""


class LineageError(PipelineError):
    """A step cannot find (or trust) the runs, models or aliases it builds on."""


class PromotionConflictError(PipelineError):
    """Another writer moved a registry alias while this step was deciding."""


class TrackingUnavailableError(PipelineError):
    """The tracking server did not answer within the client's retry budget."""


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) means the tracking server could not be reached.

    MLflow wraps the HTTP client's connection errors in MlflowException messages once its
    retries are spent; both forms are recognised.
    """
    import requests

    markers = ("Max retries exceeded", "Connection refused", "Failed to establish", "timed out")
    while error is not None:
        if isinstance(error, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
        if any(marker in str(error) for marker in markers):
            return True
        error = error.__cause__ or error.__context__
    return False
