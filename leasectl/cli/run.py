"""``leasectl run``: parser and handler for the clustered daemon (:mod:`leasectl.daemon`)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from leasectl import logs
from leasectl.cli.args import add_argument, add_common
from leasectl.config import load_settings
from leasectl.daemon import Daemon


def add_run_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run the clustered daemon (one replica)")
    add_common(p)
    add_argument(p, "--replica-id", env="REPLICA_ID", help="replica id (default host-pid-random)")
    add_argument(
        p, "--only", env="ONLY", help="comma-separated loops to run (default: all enabled)"
    )
    add_argument(
        p,
        "--no-leased",
        env="NO_LEASED",
        action="store_true",
        help="never lead: run only everywhere loops (web-only nodes)",
    )
    add_argument(p, "--log-format", env="LOG_FORMAT", choices=["text", "json"], help="log format")
    add_argument(p, "--metrics-listen", env="METRICS_LISTEN", help="HOST:PORT for /metrics")
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.dsn:
        overrides["database.dsn"] = args.dsn
    settings = load_settings(args.config, overrides=overrides)
    if args.replica_id:
        settings = replace(settings, replica=replace(settings.replica, id=args.replica_id))
    if args.only:
        only = tuple(x.strip() for x in args.only.split(",") if x.strip())
        settings = replace(settings, scheduler=replace(settings.scheduler, only=only))
    if args.log_format:
        settings = replace(settings, logging=replace(settings.logging, format=args.log_format))
    if args.metrics_listen is not None:
        settings = replace(settings, metrics=replace(settings.metrics, listen=args.metrics_listen))
    level = "DEBUG" if args.verbose else settings.logging.level
    logs.setup(settings.logging.format, level)
    daemon = Daemon(settings, no_leased=bool(args.no_leased))
    daemon.install_signals()
    return daemon.run()
