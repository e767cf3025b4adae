"""The command line of the root scripts: flags from config fields, one line per failure.

Each leaf field of a config dataclass becomes one flag (``n_customers`` -> ``--n-customers``).
A step's report is printed on success (exit 0); a problem the user can fix is one logged line
and exit 1 (2 for a bad parameter, refused before any work; 3 when ``monitor`` finds a threshold
crossed); anything else is a bug and keeps its stack trace.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from fraud_detection.config import ConfigError
from fraud_detection.config.fields import (
    build_config,
    leaves,
)
from fraud_detection.errors import PipelineError, ThresholdCrossedError
from fraud_detection.hardening.client_setup import prepare_tracking_client
from fraud_detection.hardening.outages import diagnose

logger = logging.getLogger(__name__)

C = TypeVar("C")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_PARAMETERS = 2
EXIT_MONITOR_ALARM = ThresholdCrossedError.exit_code  # 3


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
        return EXIT_MONITOR_ALARM if isinstance(error, ThresholdCrossedError) else EXIT_FAILED
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
