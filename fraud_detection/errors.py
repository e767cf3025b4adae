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
