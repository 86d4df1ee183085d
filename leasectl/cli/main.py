"""The ``leasectl`` command line: one parser, one error handler, one exit-code table.

Each subcommand lives in its own module with ``add_<cmd>_parser(sub)`` and ``cmd_<cmd>(args)``;
this module only assembles them. Every flag can also be set through a ``LEASECTL_*``
environment variable (shown in --help, see :mod:`leasectl.cli.args`).

One handler turns every failure into one line (a :class:`LeasectlError`'s message, one line
per configuration problem) and an exit code from :mod:`leasectl.cli.exit_codes`, so that an
operator reads a cause, not a Python traceback; the traceback is shown only with ``-v``. It
also covers what is not a leasectl error: an operating-system error (a data directory that
cannot be written), an error the server returns (a role without privileges), a closed output
pipe (``leasectl migrate --status | head``), SIGTERM or Ctrl-C in the middle of a command
(the work in progress is rolled back by the server).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from leasectl._version import __version__
from leasectl.cli import exit_codes
from leasectl.cli.ca import add_ca_parser
from leasectl.cli.config import add_config_parser
from leasectl.cli.demo import add_demo_parser
from leasectl.cli.drill import add_drill_parser
from leasectl.cli.embedded import add_embedded_parser
from leasectl.cli.evict import add_evict_parser
from leasectl.cli.loop import add_loop_parser
from leasectl.cli.migrate import add_migrate_parser
from leasectl.cli.run import add_run_parser
from leasectl.cli.status import add_status_parser
from leasectl.cli.step_down import add_step_down_parser
from leasectl.cli.timing import add_timing_parser
from leasectl.failures import describe


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
        add_loop_parser,
        add_config_parser,
        add_ca_parser,
        add_timing_parser,
        add_demo_parser,
        add_drill_parser,
        add_embedded_parser,
    ):
        add_parser(sub)
    return parser


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    # SIGTERM stops a command like Ctrl-C does (run, demo and drill install their own).
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    # A command started from a script in the background inherits SIGINT ignored (POSIX shells
    # do that without job control), and Python then installs no Ctrl-C handler: `kill -INT`
    # of a `status --watch` or a demo would do nothing. Ctrl-C means stop, wherever we run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    command = str(args.command) + (
        f" {args.config_command}" if getattr(args, "config_command", None) else ""
    )
    if getattr(args, "loop_command", None):
        command += f" {args.loop_command}"
    try:
        code = int(args.handler(args))
        sys.stdout.flush()  # a closed pipe shows here, not as a message at interpreter exit
        return code
    except BrokenPipeError:
        return _pipe_closed()
    except KeyboardInterrupt:
        _say(f"leasectl {command}: interrupted; work in progress was rolled back")
        return exit_codes.INTERRUPTED
    except Exception as exc:  # the one error path (leasectl.failures), shared with App.run
        return report(command, exc, verbose)


def report(command: str, exc: BaseException, verbose: bool) -> int:
    """The one error handler: the error on one line (one per configuration problem), the
    causes that add something, and the exit code (2: the command could not do its work; 1:
    an unexpected error, a bug). The traceback only with ``-v``."""
    if verbose:
        logging.exception("leasectl failed")
    lines, code = describe(exc)
    _say(f"leasectl {command}: {lines[0]}")
    for line in lines[1:]:
        _say(line)
    return code


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):
        pass


def _pipe_closed() -> int:
    """Whoever read our output stopped (``| head``): exit quietly, as a Unix tool would."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit flush must not fail again
    except (OSError, ValueError):
        pass
    return exit_codes.PIPE_CLOSED
