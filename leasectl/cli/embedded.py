"""``leasectl embedded status|stop``: the embedded PostgreSQL that a DSN-less start leaves running.

``run``, ``migrate`` and ``demo`` start the embedded server in ``database.data_dir`` when no
DSN is configured, and leave it running so the next command finds it. This is how to see it
and how to stop it.
"""

from __future__ import annotations

import argparse
from typing import Any

from leasectl.cli.args import add_common, dsn_override
from leasectl.config import load_settings
from leasectl.embedded import EmbeddedPostgres


def add_embedded_parser(sub: Any) -> None:
    p = sub.add_parser("embedded", help="show or stop the embedded PostgreSQL (no-DSN default)")
    add_common(p)
    p.add_argument("action", choices=["status", "stop"], help="what to do")
    p.set_defaults(handler=cmd_embedded)


def cmd_embedded(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, overrides=dsn_override(args), loops=False)
    server = EmbeddedPostgres(settings.database.data_dir)
    info = server.info()
    if args.action == "status":
        if info is None:
            print(f"embedded PostgreSQL in {server.data_dir}: not running")
            return 1
        print(f"embedded PostgreSQL in {server.data_dir}: running, pid {info.pid}, {info.dsn()}")
        return 0
    if info is None:
        print(f"embedded PostgreSQL in {server.data_dir}: not running; nothing to stop")
        return 0
    server.stop("fast")
    print(f"embedded PostgreSQL in {server.data_dir}: stopped (pid {info.pid})")
    return 0
