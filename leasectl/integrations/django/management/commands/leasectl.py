"""``manage.py leasectl run``: the App of ``settings.LEASECTL`` as a clustered daemon."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from leasectl import logs
from leasectl.app import App
from leasectl.errors import LeasectlError
from leasectl.integrations.django.conf import app_from_settings


class Command(BaseCommand):
    help = "Run the leasectl App of settings.LEASECTL (leased and everywhere loops, leaders)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        run = sub.add_parser("run", help="run this replica until SIGTERM / SIGINT")
        run.add_argument("--only", help="comma-separated loop names to run")
        run.add_argument("--no-leased", action="store_true", help="run no leased loop")
        run.add_argument("--metrics-listen", help="HOST:PORT of /metrics ('' for none)")
        sub.add_parser("check", help="validate the settings and print the App's loops")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            app = app_from_settings(settings)
            if options["action"] == "check":
                self._check(app)
                return
            app.configure(
                only=options["only"].split(",") if options.get("only") else None,
                no_leased=options.get("no_leased") or None,
                metrics_listen=options.get("metrics_listen"),
            )
            app_settings = app.settings
        except LeasectlError as exc:
            raise CommandError(str(exc), returncode=2) from exc
        if not logging.getLogger().handlers:
            logs.setup(app_settings.logging.format, app_settings.logging.level)
        code = app.run()
        if code:
            raise SystemExit(code)

    def _check(self, app: App) -> None:
        for spec in app.loops():
            self.stdout.write(f"loop {spec.name}: {spec.placement}, every {spec.interval:g}s")
        for decl in app.leases():
            kind = "leader" if decl.leader is not None else "lease block"
            self.stdout.write(f"lease {decl.name}: {kind}")
