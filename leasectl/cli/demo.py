"""``leasectl demo``: parser and handler (the work is in :mod:`leasectl.tools.demo.runner`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from leasectl import extras
from leasectl.cli import exit_codes
from leasectl.cli.args import add_argument


def add_demo_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run a local N-replica cluster on the embedded PostgreSQL")
    add_argument(p, "--replicas", env="DEMO_REPLICAS", type=int, default=3, help="replicas")
    add_argument(
        p, "--duration", env="DEMO_DURATION", type=float,
        help="stop after this many seconds (default: until Ctrl-C)",
    )  # fmt: skip
    add_argument(
        p, "--workdir", env="DEMO_WORKDIR", default=".leasectl/demo",
        help="data directory, config and replica logs",
    )  # fmt: skip
    add_argument(
        p, "--keep-server", env="DEMO_KEEP_SERVER", action="store_true",
        help="leave the embedded PostgreSQL running afterwards",
    )  # fmt: skip
    add_argument(p, "-v", "--verbose", env="VERBOSE", action="store_true", help="debug logs")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    if not 1 <= args.replicas <= 9:
        print("leasectl demo: --replicas must be between 1 and 9", file=sys.stderr)
        return exit_codes.CANNOT_START
    # rich, the certificate loops and the embedded server: the 'demo' extra, imported only here
    extras.require("demo", "leasectl demo")
    from leasectl.tools.demo.runner import Demo

    return Demo(
        args.replicas, Path(args.workdir), duration=args.duration, keep_server=args.keep_server
    ).run()
