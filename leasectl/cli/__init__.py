"""The ``leasectl`` command line: thin parsers and handlers, no SQL.

Every flag can also be set through a ``LEASECTL_*`` environment variable (shown in --help).
One top-level handler prints the cause chain of a :class:`LeasectlError` and exits non-zero;
the traceback is shown only with ``-v``.

Exit codes: 0 success; 1 a check failed (e.g. ``status`` found an unheld lease); 2 cannot
connect / not migrated / bad configuration; 3 a drill invariant failed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from leasectl import __version__
from leasectl.cli.args import add_argument, add_common
from leasectl.errors import ConfigError, DatabaseUnavailable, LeasectlError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_UNAVAILABLE = 2


def add_migrate_parser(sub: Any) -> None:
    p = sub.add_parser("migrate", help="apply pending schema migrations (under the lock)")
    add_common(p)
    add_argument(
        p, "--status", env="MIGRATE_STATUS", action="store_true", help="only show the state"
    )
    p.set_defaults(handler=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    from leasectl.config import load_settings
    from leasectl.db import resolve_dsn, resolve_lock_dsn
    from leasectl.migrate import migrate, migration_status

    settings = load_settings(args.config, overrides=_dsn_override(args))
    dsn = resolve_dsn(settings.database)
    if args.status:
        st = migration_status(dsn, settings.core)
        for v in st.applied:
            print(f"applied  {v}")
        for v in st.pending:
            print(f"pending  {v}")
        for v in st.changed:
            print(f"CHANGED  {v}")
        return EXIT_OK if not st.changed else EXIT_CHECK_FAILED
    done = migrate(dsn, settings.core, lock_dsn=resolve_lock_dsn(settings.database, dsn))
    print(f"applied {len(done)} migration(s)" + (": " + ", ".join(done) if done else ""))
    return EXIT_OK


def _dsn_override(args: argparse.Namespace) -> dict[str, Any]:
    return {"database.dsn": args.dsn} if getattr(args, "dsn", None) else {}


def build_parser() -> argparse.ArgumentParser:
    from leasectl import commands

    parser = argparse.ArgumentParser(
        prog="leasectl", description="Leader-elected scheduler on PostgreSQL advisory locks."
    )
    parser.add_argument("--version", action="version", version=f"leasectl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_migrate_parser(sub)
    for register in commands.REGISTER:
        register(sub, add_common)
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
        return 130
    except LeasectlError as exc:
        if verbose:
            logging.exception("leasectl failed")
        print(f"leasectl {args.command}: error: {exc}", file=sys.stderr)
        cause = exc.__cause__
        while cause is not None:
            print(f"  caused by: {type(cause).__name__}: {cause}", file=sys.stderr)
            cause = cause.__cause__
        if isinstance(exc, ConfigError | DatabaseUnavailable):
            return EXIT_UNAVAILABLE
        return EXIT_CHECK_FAILED


if __name__ == "__main__":
    sys.exit(main())
