"""``leasectl embedded status|start|stop``: the embedded PostgreSQL of a DSN-less project.

``run``, ``migrate`` and ``demo`` start the embedded server when no DSN is configured, and
leave it running so the next command finds it. Every command finds the same one from any
folder of the project (:func:`leasectl.embedded.locate_data_dir`), or the one named by
``--data-dir`` / ``database.data_dir``. ``stop`` refuses while replicas use it (their leases
would all drop at once) unless ``--force``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from leasectl import status as st
from leasectl.cli import exit_codes
from leasectl.cli.args import add_argument, add_common, dsn_override
from leasectl.config import load_settings
from leasectl.embedded import EmbeddedPostgres, locate_data_dir


def add_embedded_parser(sub: Any) -> None:
    p = sub.add_parser(
        "embedded", help="show, start or stop the embedded PostgreSQL (no-DSN default)"
    )
    add_common(p)
    p.add_argument("action", choices=["status", "start", "stop"], help="what to do")
    add_argument(
        p,
        "--data-dir",
        env="EMBEDDED_DATA_DIR",
        help="its data directory (default: database.data_dir; .leasectl/pgdata is looked "
        "for from the current folder up, like git finds .git)",
    )
    add_argument(
        p,
        "--force",
        env="EMBEDDED_FORCE",
        action="store_true",
        help="stop: even while replicas use it",
    )
    p.set_defaults(handler=cmd_embedded)


def cmd_embedded(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, overrides=dsn_override(args), loops=False)
    server = EmbeddedPostgres(locate_data_dir(args.data_dir or settings.database.data_dir))
    where = f"embedded PostgreSQL in {server.data_dir}"
    info = server.info()
    if args.action == "start":
        started = info is None
        info = server.ensure_running()
        print(f"{where}: {'started' if started else 'already running'}, pid {info.pid}")
        print(f"LEASECTL_DSN='{info.dsn()}'")
        return exit_codes.OK
    if args.action == "status":
        if info is None:
            print(f"{where}: not running")
            return exit_codes.CHECK_FAILED
        print(f"{where}: running, pid {info.pid}, {info.dsn()}")
        for db, replicas in st.replica_sessions(info.dsn()):
            print(f"  database {db}: replicas {', '.join(sorted(replicas))}")
        return exit_codes.OK
    if info is None:
        print(f"{where}: not running; nothing to stop")
        return exit_codes.OK
    users = st.replica_sessions(info.dsn())
    if users and not args.force:
        using = "; ".join(f"{', '.join(sorted(r))} in database {db}" for db, r in users)
        print(
            f"{where}: not stopped: replicas use it ({using}). Stop them first (their leases "
            "would all drop at once), or pass --force.",
            file=sys.stderr,
        )
        return exit_codes.CHECK_FAILED
    server.stop("fast")
    print(f"{where}: stopped (pid {info.pid})")
    return exit_codes.OK
