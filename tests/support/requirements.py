"""Skip a test whose component is not installed, with the command that installs it; in CI
(``CI`` set), where `.ci/run` installs everything, fail it instead."""

from __future__ import annotations

import importlib.util
import os

import pytest


def require(available: bool, what: str, install: str) -> None:
    """Skip (fail in CI) when ``what`` is missing."""
    if available:
        return
    message = f"{what} is not installed ({install})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_modules(*modules: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    require(not missing, ", ".join(missing), 'pip install -e ".[dev,integration]"')
