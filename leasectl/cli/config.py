"""``leasectl config show|check``: the effective configuration, secrets redacted."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("config", help="show or check the effective configuration")
    actions = p.add_subparsers(dest="config_command", required=True)
    show = actions.add_parser("show", help="print the effective configuration (secrets redacted)")
    common(show)
    show.set_defaults(handler=cmd_config_show)
    check = actions.add_parser("check", help="validate the configuration; exit 2 if invalid")
    common(check)
    check.set_defaults(handler=cmd_config_check)


def _load(args: argparse.Namespace) -> Any:
    from leasectl.config import load_settings

    return load_settings(args.config, overrides={"database.dsn": args.dsn} if args.dsn else None)


def cmd_config_show(args: argparse.Namespace) -> int:
    from leasectl.config import to_yaml

    sys.stdout.write(to_yaml(_load(args), redact=True))
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    import importlib

    settings = _load(args)
    # The loops check what only they know (e.g. the digest needs an SMTP host) when built.
    registry = importlib.import_module(settings.scheduler.loops_package + ".registry")
    specs = registry.build_loops(settings.loops)
    leased = sum(1 for s in specs if s.placement == "leased")
    print(f"configuration is valid: {len(specs)} loops enabled ({leased} leased)")
    return 0
