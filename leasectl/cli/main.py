"""The ``leasectl`` command line: one parser, one error handler, one exit-code table.

Each subcommand lives in its own module with ``add_<cmd>_parser(sub)`` and ``cmd_<cmd>(args)``;
this module only assembles them. Every flag can also be set through a ``LEASECTL_*``
environment variable (shown in --help, see :mod:`leasectl.cli.args`). One handler prints the
cause chain of a :class:`LeasectlError` on one line per cause and exits non-zero; the
traceback is shown only with ``-v``. Exit codes: :mod:`leasectl.cli.exit_codes`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from leasectl._version import __version__
from leasectl.cli import exit_codes
from leasectl.cli.ca import add_ca_parser
from leasectl.cli.config import add_config_parser
from leasectl.cli.demo import add_demo_parser
from leasectl.cli.drill import add_drill_parser
from leasectl.cli.embedded import add_embedded_parser
from leasectl.cli.evict import add_evict_parser
from leasectl.cli.migrate import add_migrate_parser
from leasectl.cli.run import add_run_parser
from leasectl.cli.status import add_status_parser
from leasectl.cli.step_down import add_step_down_parser
from leasectl.errors import ConfigError, DatabaseUnavailable, LeasectlError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leasectl", description="Leader-elected scheduler on PostgreSQL advisory locks."
    )
    parser.add_argument("--version", action="version", version=f"leasectl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser in (
        add_migrate_parser,
        add_run_parser,
        add_status_parser,
        add_step_down_parser,
        add_evict_parser,
        add_config_parser,
        add_ca_parser,
        add_demo_parser,
        add_drill_parser,
        add_embedded_parser,
    ):
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return exit_codes.INTERRUPTED
    except LeasectlError as exc:
        return report(args.command, exc, verbose)


def report(command: str, exc: LeasectlError, verbose: bool) -> int:
    """The one error handler: the error and its causes, one line each; the exit code."""
    if verbose:
        logging.exception("leasectl failed")
    print(f"leasectl {command}: error: {exc}", file=sys.stderr)
    cause = exc.__cause__
    while cause is not None:
        print(f"  caused by: {type(cause).__name__}: {cause}", file=sys.stderr)
        cause = cause.__cause__
    if isinstance(exc, ConfigError | DatabaseUnavailable):
        return exit_codes.CANNOT_START
    return exit_codes.CHECK_FAILED
