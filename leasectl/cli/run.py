"""``leasectl run``: one replica of the clustered daemon.

Without ``--app`` it runs the shipped loops (``scheduler.loops_package``, default
``leasectl.certs``); with ``--app module:attribute`` (or ``$LEASECTL_APP``) it runs that
:class:`leasectl.App` with every daemon feature: migrations, leases, ``/metrics``, signals,
``--only``, ``--no-leased``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from leasectl import logs
from leasectl.app import App, load_app
from leasectl.cli.args import add_argument, add_common, settings_from
from leasectl.errors import ConfigError
from leasectl.migrate import MigrationSource
from leasectl.settings import Settings


def add_run_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run the clustered daemon (one replica)")
    add_common(p)
    add_app_argument(p)
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
    # One variable for the flag and the setting (metrics.listen): LEASECTL_METRICS__LISTEN.
    add_argument(
        p,
        "--metrics-listen",
        env="METRICS__LISTEN",
        help="HOST:PORT of /metrics, /healthz and the status page (metrics.listen)",
    )
    p.set_defaults(handler=cmd_run)


def add_app_argument(parser: argparse.ArgumentParser) -> None:
    """``--app MODULE:ATTR``: shared by run and the commands that read an App's loops."""
    add_argument(
        parser,
        "--app",
        env="APP",
        help="your leasectl.App as MODULE:ATTRIBUTE (default: the shipped loops)",
    )


def app_from_args(args: argparse.Namespace) -> App:
    """The App the command line names: ``--app``'s, or one that includes the shipped loops.

    ``--config`` and ``--dsn`` apply to either.
    """
    target = getattr(args, "app", None)
    if target:
        # Like other app servers, resolve the module from the current directory first.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        app = load_app(target)
        app.configure(config=args.config, dsn=args.dsn)
        return app
    app = App(config=args.config, dsn=args.dsn)
    # Validated whole (the loops: section too, every problem at once) to learn the package.
    app.include(settings_from(args).scheduler.loops_package)
    return app


def named_app(args: argparse.Namespace) -> App | None:
    """``--app``'s App, imported but not configured yet (None without ``--app``)."""
    return app_from_args(args) if getattr(args, "app", None) else None


def app_on(args: argparse.Namespace, settings: Settings, app: App | None = None) -> App:
    """The App a reading command describes (``timing``, ``config check``), on settings it
    already loaded (without the loops' secrets): ``--app``'s, or the shipped loops as bare
    ``leasectl run`` runs them."""
    if app is None:
        app = named_app(args)
    if app is None:
        app = App(settings=settings)
        app.include(settings.scheduler.loops_package)
    app.configure(settings=settings)
    return app


def includes_shipped_loops(app: App | None, settings: Settings) -> bool:
    """Whether the App reads the config's ``loops:`` section (no ``--app``: yes)."""
    return app is None or settings.scheduler.loops_package in app.included


def migration_sources_from(args: argparse.Namespace, settings: Settings) -> list[MigrationSource]:
    """The migration folders of the App the command line names (``migrate``): ``--app``'s, or
    the shipped loops' when there is none. Reads no loop settings (no secrets needed)."""
    if getattr(args, "app", None):
        return app_from_args(args).migration_sources
    app = App(settings=settings)
    app.include(settings.scheduler.loops_package)
    return app.migration_sources


def cmd_run(args: argparse.Namespace) -> int:
    if "LEASECTL_METRICS_LISTEN" in os.environ:
        raise ConfigError(
            "LEASECTL_METRICS_LISTEN is not read: set LEASECTL_METRICS__LISTEN (one variable "
            "for metrics.listen and --metrics-listen)"
        )
    app = app_from_args(args)
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    app.configure(
        replica_id=args.replica_id,
        only=only,
        no_leased=bool(args.no_leased),
        metrics_listen=args.metrics_listen,
        log_format=args.log_format,
    )
    settings = app.settings
    logs.setup(settings.logging.format, "DEBUG" if args.verbose else settings.logging.level)
    return app.run(report_errors=False)
