"""``leasectl migrate``: apply pending schema migrations under the migration lock.

With ``--app MODULE:ATTR`` the App's migration folders (those of the packages it includes,
then its own ``App(migrations=[...])``) are applied after leasectl's, into the same ledger.
Without it, what bare ``leasectl run`` needs: leasectl's and the shipped certificate loops'.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from leasectl.cli import exit_codes
from leasectl.cli.args import add_argument, add_common, settings_from
from leasectl.cli.run import add_app_argument, migration_sources_from
from leasectl.db import configured_dsn, resolve_dsn, resolve_lock_dsn
from leasectl.embedded import locate_data_dir
from leasectl.migrate import migrate, migration_status
from leasectl.status import status_dsn


def add_migrate_parser(sub: Any) -> None:
    p = sub.add_parser("migrate", help="apply pending schema migrations (under the lock)")
    add_common(p)
    add_app_argument(p)
    add_argument(
        p, "--status", env="MIGRATE_STATUS", action="store_true", help="only show the state"
    )
    p.set_defaults(handler=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = settings_from(args, loops=False)
    sources = migration_sources_from(args, settings)
    if args.status:
        dsn = status_dsn(settings)  # a read-only look never starts the embedded server
        st = migration_status(dsn, settings.core, sources=sources)
        for v in st.applied:
            print(f"applied  {v}")
        for v in st.pending:
            print(f"pending  {v}")
        for v in st.changed:
            print(f"CHANGED  {v}")
        return exit_codes.OK if not st.changed else exit_codes.CHECK_FAILED
    if configured_dsn(settings.database) is None:
        print(
            f"no DSN configured: using the embedded PostgreSQL in "
            f"{locate_data_dir(settings.database.data_dir)} "
            "(for trying leasectl on one machine; stop it with `leasectl embedded stop`)",
            file=sys.stderr,
        )
    dsn = resolve_dsn(settings.database)
    done = migrate(
        dsn, settings.core, lock_dsn=resolve_lock_dsn(settings.database, dsn), sources=sources
    )
    print(f"applied {len(done)} migration(s)" + (": " + ", ".join(done) if done else ""))
    return exit_codes.OK
