"""``leasectl config show|check``: the effective configuration, secrets redacted."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leasectl.cli import exit_codes
from leasectl.cli.args import add_common, dsn_override, settings_from
from leasectl.cli.timing import add_timing_arguments
from leasectl.config import Loaded, blame, load_traced, parse_yaml, to_yaml
from leasectl.errors import ConfigError
from leasectl.loop import LoopSpec
from leasectl.settings import SchedulerSettings


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
    """Everything ``run`` would refuse, reported at once, each with where it was set.

    First the file itself (every problem of the schema at once, see leasectl.config); then
    what only the loops know when they are built (e.g. the digest needs an SMTP host: each
    loop module is built on its own so that every loop's problems are reported together),
    and ``scheduler.only`` naming a loop that does not exist.
    """
    try:
        loaded = load_traced(args.config, overrides=dsn_override(args) or None)
    except ConfigError as exc:
        # The file has other problems: still say if scheduler.only names no loop, so one
        # run of `config check` lists everything (it was reported only when alone).
        extra = _unknown_only(args.config)
        if extra is None:
            raise
        raise ConfigError([*exc.problems, extra], exc.source) from exc
    settings = loaded.settings
    package = settings.scheduler.loops_package
    registry = importlib.import_module(package + ".registry")
    problems: list[str] = []
    specs = _build_each(registry, package, settings.loops, loaded, problems)
    known = {s.name for s in specs} | set(getattr(registry, "LOOP_MODULES", ()))
    unknown = [n for n in settings.scheduler.only if n not in known]
    if unknown:
        problems.append(
            f"scheduler.only: unknown loop(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(known))} ({loaded.origin('scheduler.only')})"
        )
    if problems:
        raise ConfigError(problems, blame(problems, loaded.source))
    leased = sum(1 for s in specs if s.placement == "leased")
    print(f"configuration is valid: {len(specs)} loops enabled ({leased} leased)")
    return exit_codes.OK


def _unknown_only(path: str | None) -> str | None:
    """``scheduler.only`` names that no loop module of the package has, read from the raw
    file and environment (used when the file does not validate, so no settings exist)."""
    try:
        text = Path(path).read_text() if path else ""
        data, lines = parse_yaml(text, path or "") if text else ({}, {})
        scheduler = data.get("scheduler") or {} if isinstance(data, dict) else {}
        only: Any = os.environ.get("LEASECTL_SCHEDULER__ONLY", scheduler.get("only") or [])
        names = [n.strip() for n in only.split(",")] if isinstance(only, str) else list(only)
        package = os.environ.get(
            "LEASECTL_SCHEDULER__LOOPS_PACKAGE",
            scheduler.get("loops_package") or SchedulerSettings().loops_package,
        )
        known = set(importlib.import_module(f"{package}.registry").LOOP_MODULES)
    except Exception:  # noqa: BLE001 - best effort: the other problems are reported anyway
        return None
    unknown = [str(n) for n in names if n and n not in known]
    if not unknown:
        return None
    where = (
        "env LEASECTL_SCHEDULER__ONLY"
        if "LEASECTL_SCHEDULER__ONLY" in os.environ
        else f"{path}:{lines.get('scheduler.only', '?')}"
    )
    return (
        f"scheduler.only: unknown loop(s) {', '.join(unknown)}; known: "
        f"{', '.join(sorted(known))} ({where})"
    )


_KEY = re.compile(r"\bloops(?:\.[a-z_][a-z0-9_]*)+")


def _build_each(
    registry: Any, package: str, config: Any, loaded: Loaded, problems: list[str]
) -> list[LoopSpec]:
    """Build the loops one module at a time when the package lists them (``LOOP_MODULES``
    naming modules with ``build``), else with ``build_loops``; collect every failure."""
    builders: list[tuple[str, Callable[[Any], Any]]] = []
    for name in getattr(registry, "LOOP_MODULES", ()):
        try:
            module = importlib.import_module(f"{package}.{name}")
        except ImportError:
            builders = []
            break
        build = getattr(module, "build", None)
        if build is None:
            builders = []
            break
        builders.append((name, build))
    if not builders:
        builders = [(package, registry.build_loops)]
    specs: list[LoopSpec] = []
    for name, build in builders:
        try:
            built = build(config)
        except ConfigError as exc:
            problems.extend(_located(p, loaded) for p in exc.problems)
            continue
        except Exception as exc:  # any failure to build is a problem run would stop on
            problems.append(f"{name}: cannot be built: {type(exc).__name__}: {exc}")
            continue
        if isinstance(built, list):
            specs.extend(built)
        elif built is not None:
            specs.append(built)
    return specs


def _located(problem: str, loaded: Loaded) -> str:
    """A loop's problem with where the first setting it names was set (file:line)."""
    m = _KEY.search(problem)
    if m is None or problem.rstrip().endswith(")"):
        return problem
    return f"{problem} ({loaded.origin(m.group(0))})"
