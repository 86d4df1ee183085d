"""One way to tell a failure: the same lines and exit code from ``app.run()`` and ``leasectl``.

A replica that cannot start says why on one line (one per configuration problem), adds the
causes that say something more, and exits 2; the traceback is for ``-v`` (debug logging)
only. ``leasectl <command>`` (:mod:`leasectl.cli.main`) and :meth:`leasectl.App.run` both call
:func:`describe`, so a bad ``LEASECTL_LEASES__LEASE_TTL`` or a database that refuses reads the
same from a script as from the command line.
"""

from __future__ import annotations

import psycopg

from leasectl.daemon import EXIT_RUNTIME, EXIT_START
from leasectl.errors import ConfigError, LeasectlError


def describe(exc: BaseException) -> tuple[list[str], int]:
    """``(lines, exit code)`` for a failure: the first line is the error, the others its
    causes. Exit 2 for what stopped the work (configuration, the database, the operating
    system), 1 for an unexpected error (a bug)."""
    if isinstance(exc, LeasectlError):
        text = str(exc) if "\n  - " in str(exc) else one_line(exc)
        lines = [f"error: {text}"]
        # A configuration problem says everything itself; other errors may add their causes.
        cause = None if isinstance(exc, ConfigError) else exc.__cause__
        while cause is not None:
            said = one_line(cause)
            if said and said not in text:
                lines.append(f"  caused by: {type(cause).__name__}: {said}")
                text += said
            cause = cause.__cause__
        return lines, EXIT_START
    if isinstance(exc, psycopg.Error):  # refused by the server (privileges, an object): no bug
        state = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
        return [f"error: the database refused: {one_line(exc)}{state}"], EXIT_START
    if isinstance(exc, OSError):
        return [f"error: {one_line(exc)}"], EXIT_START
    return [
        f"unexpected error: {type(exc).__name__}: {one_line(exc)} "
        "(a bug; run again with -v for the traceback and report it)"
    ], EXIT_RUNTIME


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (libpq's messages span several)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {exc.filename}"
    return " ".join(str(exc).split())
