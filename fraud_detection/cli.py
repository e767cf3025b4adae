"""Command-line plumbing shared by the root scripts: flags from config fields, clean exits.

Each leaf field of a config dataclass becomes one flag (``n_customers`` -> ``--n-customers``) and
one MLproject parameter of the same snake_case name; nested dataclasses only group fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import logging
import os
import sys
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.tracking import MlflowClient

from fraud_detection.config import ConfigError
from fraud_detection.errors import PipelineError
from fraud_detection.outages import diagnose, quick_requests
from fraud_detection.recovery import repair_remembered

logger = logging.getLogger(__name__)

C = TypeVar("C")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_PARAMETERS = 2


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One user-facing parameter: its name, type, default and help text."""

    name: str
    type: type
    default: Any
    help: str


def leaves(config_type: type) -> Iterator[Leaf]:
    """Yield the leaf parameters of a config dataclass, depth first, in declaration order."""
    hints = typing.get_type_hints(config_type)
    for item in dataclasses.fields(config_type):
        field_type = hints[item.name]
        if dataclasses.is_dataclass(field_type):
            yield from leaves(field_type)
        else:
            default = item.default
            if default is dataclasses.MISSING:
                raise TypeError(f"{config_type.__name__}.{item.name} needs a default")
            yield Leaf(item.name, field_type, default, item.metadata.get("help", ""))


def build_config(config_type: type[C], values: Mapping[str, Any]) -> C:
    """Build ``config_type`` from flat ``{leaf name: value}``; missing leaves keep defaults.

    String values (as MLflow stores parameters) are converted to the field's type.
    """
    hints = typing.get_type_hints(config_type)
    kwargs: dict[str, Any] = {}
    for item in dataclasses.fields(config_type):
        field_type = hints[item.name]
        if dataclasses.is_dataclass(field_type):
            kwargs[item.name] = build_config(field_type, values)
        elif item.name in values:
            kwargs[item.name] = _convert(item.name, field_type, values[item.name])
    return config_type(**kwargs)


def flatten(config: Any) -> dict[str, Any]:
    """Return ``{leaf name: value}`` for a config instance (the inverse of ``build_config``)."""
    flat: dict[str, Any] = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            flat.update(flatten(value))
        else:
            flat[item.name] = value
    return flat


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def _convert(name: str, field_type: type, value: Any) -> Any:
    if isinstance(value, field_type) and not (field_type is int and isinstance(value, bool)):
        return value
    text = str(value).strip()
    if field_type is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    try:
        if field_type is int:
            number = float(text)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if field_type is float:
            return float(text)
    except ValueError as error:
        raise ConfigError(f"{name} must be {field_type.__name__}, got {value!r}") from error
    return str(value)


def add_arguments(parser: argparse.ArgumentParser, config_type: type) -> None:
    """Add one ``--flag`` per leaf parameter of ``config_type`` to ``parser``."""
    for leaf in leaves(config_type):
        # A bool flag alone means true (--rollback); MLproject passes it a value (false).
        switch = {"nargs": "?", "const": "true"} if leaf.type is bool else {}
        parser.add_argument(
            "--" + leaf.name.replace("_", "-"),
            dest=leaf.name,
            default=leaf.default,
            help=leaf.help or None,
            metavar=leaf.type.__name__.upper(),
            **switch,
        )


def parse_config(config_type: type[C], argv: Sequence[str] | None, description: str) -> C:
    """Parse command-line flags into ``config_type``; invalid values raise ``ConfigError``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_arguments(parser, config_type)
    return build_config(config_type, vars(parser.parse_args(argv)))


# MLflow's client retries a failing request 7 times with a backoff factor of 2 and a 120 s
# timeout: a dead server stalls a step for about eight minutes. These defaults retry for about
# 30 s, which rides out a server restart; set the variables yourself to choose otherwise.
CLIENT_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def prepare_tracking_client() -> None:
    """Set the client's retry budget, initialise a new SQLite store safely, recover runs.

    Several processes opening a brand-new SQLite store at once race to create its tables
    (MLflow 3.17 then fails with "table already exists" or an alembic error); the first
    process creates them under a file lock while the others wait.
    """
    for name, value in CLIENT_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{database}.init-lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                MlflowClient().search_experiments(max_results=1)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        # One quick attempt: if the server is unwell, the step's own requests will say so.
        with quick_requests():
            repair_remembered()
    except Exception as error:  # noqa: BLE001 - recovery is best effort; the step goes on
        logger.warning(
            "Could not repair what an earlier outage left yet: %s", str(error).splitlines()[0]
        )


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # MLflow's own INFO lines are useful; alembic's migration chatter on a new SQLite store is not.
    logging.getLogger("alembic").setLevel(logging.WARNING)


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand of a script: its config type, the step it runs, and its help line."""

    config_type: type
    step: Callable[[Any], str]
    help: str


def main_with_exit_code(
    config_type: type[C],
    step: Callable[[C], str],
    argv: Sequence[str] | None,
    description: str,
) -> int:
    """Run one entry point: parse, run the step, print its report, map failures to exit codes.

    A user-caused problem (bad parameter, bad data, missing run) prints one clear line and no
    stack trace; anything else is a bug and keeps its traceback.
    """
    configure_logging()
    try:
        config = parse_config(config_type, argv, description)
    except ConfigError as error:
        logger.error("Invalid parameter: %s", error)
        return EXIT_BAD_PARAMETERS
    return _run_step(step, config)


def main_with_commands(
    commands: Mapping[str, Command], argv: Sequence[str] | None, description: str
) -> int:
    """Like ``main_with_exit_code`` for a script with subcommands (``serve.py batch ...``)."""
    configure_logging()
    parser = argparse.ArgumentParser(description=description)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in commands.items():
        subparser = subparsers.add_parser(
            name,
            help=command.help,
            description=command.help,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        add_arguments(subparser, command.config_type)
    arguments = vars(parser.parse_args(argv))
    command = commands[arguments.pop("command")]
    try:
        config = build_config(command.config_type, arguments)
    except ConfigError as error:
        logger.error("Invalid parameter: %s", error)
        return EXIT_BAD_PARAMETERS
    return _run_step(command.step, config)


def _run_step(step: Callable[[C], str], config: C) -> int:
    try:
        prepare_tracking_client()
        report = step(config)
    except ConfigError as error:
        logger.error("Invalid parameter: %s", error)
        return EXIT_BAD_PARAMETERS
    except PipelineError as error:
        logger.error("%s", error)
        return EXIT_FAILED
    except Exception as error:
        outage = diagnose(error)
        if outage is None:
            raise  # a bug: keep the stack trace
        logger.error("%s", outage.describe())
        return EXIT_FAILED
    print(report)  # the command's final report
    return EXIT_OK


def run(config_type: type[C], step: Callable[[C], str], description: str) -> None:
    """Entry point of a root script: exits the process with the step's status."""
    sys.exit(main_with_exit_code(config_type, step, None, description))
