"""``leasectl config show|check``: the effective configuration, secrets redacted."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from leasectl.cli import exit_codes
from leasectl.cli.args import add_common, settings_from
from leasectl.cli.timing import add_timing_arguments
from leasectl.config import to_yaml


def add_config_parser(sub: Any) -> None:
    p = sub.add_parser("config", help="show or check the effective configuration")
    actions = p.add_subparsers(dest="config_command", required=True)
    show = actions.add_parser("show", help="print the effective configuration (secrets redacted)")
    add_common(show)
    show.set_defaults(handler=cmd_config_show)
    check = actions.add_parser("check", help="validate the configuration; exit 2 if invalid")
    add_common(check)
    check.set_defaults(handler=cmd_config_check)
    explain = actions.add_parser(
        "explain-timing", help="the same as `leasectl timing`: bounds and the safety inequality"
    )
    add_timing_arguments(explain)


def cmd_config_show(args: argparse.Namespace) -> int:
    # Never fails for a secret that is not set here: it shows where it would come from.
    sys.stdout.write(to_yaml(settings_from(args, unset_secrets=""), redact=True))
    return exit_codes.OK


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    # The loops check what only they know (e.g. the digest needs an SMTP host) when built;
    # the package is the configured one (scheduler.loops_package), found by name.
    registry = importlib.import_module(settings.scheduler.loops_package + ".registry")
    specs = registry.build_loops(settings.loops)
    leased = sum(1 for s in specs if s.placement == "leased")
    print(f"configuration is valid: {len(specs)} loops enabled ({leased} leased)")
    return exit_codes.OK
