"""The error of a bad parameter, shared by the parameter dataclasses and the durations they
parse (``parameters``, ``durations``)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A parameter is out of its allowed range; raised before any work starts."""
