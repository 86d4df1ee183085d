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

import yaml

from leasectl.cli import exit_codes
from leasectl.cli.args import add_common, dsn_override, settings_from
from leasectl.cli.run import add_app_argument, app_on, includes_shipped_loops, named_app
from leasectl.cli.timing import add_timing_arguments
from leasectl.config import Loaded, blame, dump, load_traced, parse_yaml
from leasectl.errors import ConfigError
from leasectl.loop import LoopSpec
from leasectl.settings import SchedulerSettings


def add_config_parser(sub: Any) -> None:
    p = sub.add_parser("config", help="show or check the effective configuration")
    actions = p.add_subparsers(dest="config_command", required=True)
    show = actions.add_parser("show", help="print the effective configuration (secrets redacted)")
    add_common(show)
    add_app_argument(show)
    show.set_defaults(handler=cmd_config_show)
    check = actions.add_parser("check", help="validate the configuration; exit 2 if invalid")
    add_common(check)
    add_app_argument(check)
    check.set_defaults(handler=cmd_config_check)
    explain = actions.add_parser(
        "explain-timing", help="the same as `leasectl timing`: bounds and the safety inequality"
    )
    add_timing_arguments(explain)


def cmd_config_show(args: argparse.Namespace) -> int:
    """The settings the App uses: the ``loops:`` section only when it includes the shipped
    loops (bare ``run`` does; an ``--app`` without them never reads it)."""
    app = named_app(args)
    # Never fails for a secret that is not set here: it shows where it would come from.
    probe = settings_from(args, loops=False)
    with_loops = includes_shipped_loops(app, probe)
    settings = settings_from(args, unset_secrets="") if with_loops else probe
    data = dump(settings, redact=True)
    if data.get("loops") is None:
        data.pop("loops", None)
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False, width=100))
    return exit_codes.OK


def cmd_config_check(args: argparse.Namespace) -> int:
    """Everything ``run`` would refuse, reported at once, each with where it was set.

    First the file itself (every problem of the schema at once, see leasectl.config); then
    what only the loops know when they are built (e.g. the digest needs an SMTP host: each
    loop module is built on its own so that every loop's problems are reported together),
    and ``scheduler.only`` naming a loop that does not exist.
    """
    app = named_app(args)
    if app is not None:
        return _check_app(args, app)
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


def _check_app(args: argparse.Namespace, app: Any) -> int:
    """``config check --app``: the configuration as that App reads it (the ``loops:``
    section only if it includes the shipped loops), then its loops built as ``run`` builds
    them, and ``scheduler.only`` against their names."""
    probe = load_traced(args.config, overrides=dsn_override(args) or None, loops=False)
    loaded = probe
    if includes_shipped_loops(app, probe.settings):
        loaded = load_traced(args.config, overrides=dsn_override(args) or None)
    app = app_on(args, loaded.settings, app)
    try:
        specs = app.loops()
    except ConfigError as exc:
        problems = [_located(p, loaded) for p in exc.problems]
        raise ConfigError(problems, blame(problems, loaded.source)) from None
    known = {s.name for s in specs}
    unknown = [n for n in loaded.settings.scheduler.only if n not in known]
    if unknown:
        problems = [
            f"scheduler.only: unknown loop(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(known))} ({loaded.origin('scheduler.only')})"
        ]
        raise ConfigError(problems, blame(problems, loaded.source))
    leased = sum(1 for s in specs if s.placement == "leased")
    print(
        f"configuration is valid for --app {args.app}: {len(specs)} loops enabled ({leased} leased)"
    )
    return exit_codes.OK


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
