"""``leasectl status``: lease and replica status, from the database only.

Thin: the data comes from :mod:`leasectl.status` as dataclasses and the tables from
:mod:`leasectl.tools.status_view` (shared with the demo); this module turns flags into calls.

Reading status never needs the loops' secrets: the configuration is validated, but a secret
whose environment variable is not set stays unresolved (``unset_secrets="loops"``). The
expected leases are those the live and recent replicas declare (each registers its App's
leased loops, after ``--only``, and its @leader functions' leases), or with ``--app`` that
App's leased loops after ``scheduler.only`` and its @leader functions' leases.

Exit codes of ``status``: 0 every expected lease is held; 1 a lease is unheld or stale for
more than ``--max-unheld`` seconds; 2 cannot connect or the database is not migrated.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from typing import Any

from leasectl import status as st
from leasectl.cli import exit_codes
from leasectl.cli.args import add_argument, add_common, settings_from
from leasectl.cli.run import add_app_argument, app_from_args
from leasectl.errors import DatabaseUnavailable
from leasectl.settings import Settings
from leasectl.tools.status_view import (
    Section,
    loop_sections,
    plain_text,
    render,
    render_text,
    rich_group,
    sections,
)


def add_status_parser(sub: Any) -> None:
    p = sub.add_parser(
        "status", help="lease, replica and loop status (last runs, next fires), from the database"
    )
    add_common(p)
    add_app_argument(p)
    add_argument(p, "--json", env="STATUS_JSON", action="store_true", help="print JSON")
    add_argument(
        p, "--watch", env="STATUS_WATCH", action="store_true",
        help="refresh in place until Ctrl-C (with --json: one JSON object per line)",
    )  # fmt: skip
    add_argument(
        p,
        "--interval",
        env="STATUS_INTERVAL",
        type=float,
        default=1.0,
        help="--watch refresh interval in seconds",
    )
    add_argument(
        p,
        "--max-unheld",
        env="STATUS_MAX_UNHELD",
        type=float,
        default=0.0,
        help="exit 1 only if a lease is unheld or stale for longer than this (seconds)",
    )
    add_argument(
        p,
        "--all-replicas",
        env="STATUS_ALL_REPLICAS",
        action="store_true",
        help="also list replicas stopped long ago",
    )
    add_argument(
        p,
        "--loop",
        env="STATUS_LOOP",
        default=None,
        help="show one loop: its last run per replica, next fire, and its recent runs",
    )
    add_argument(
        p,
        "--history",
        env="STATUS_HISTORY",
        type=int,
        default=20,
        help="with --loop: how many of the ledger's newest slots to list (leased loops)",
    )
    p.set_defaults(handler=cmd_status)


#: ``expected()`` without ``--app``: read the replicas' declarations at every refresh.
DECLARED: tuple[list[str] | None, str] = (None, "declared")


def expected(args: argparse.Namespace, settings: Settings) -> tuple[list[str] | None, str]:
    """The leases that should be held, and where that list came from: ``--app``'s leased
    loops, or (:data:`DECLARED`) those the live and recent replicas declare."""
    if not getattr(args, "app", None):
        return DECLARED
    app = app_from_args(args)  # a bad --app is a configuration error (exit 2)
    app.configure(settings=settings)  # the settings loaded without the loops' secrets
    try:
        specs = app.loops()
    except Exception as exc:  # a loop that cannot be built must not break status
        return None, f"recorded leases only (--app {args.app}: {type(exc).__name__}: {exc})"
    names = [s.name for s in specs if s.placement == "leased"]
    only = settings.scheduler.only
    if only:
        names = [n for n in names if n in only]
    # A leader function's lease should always be held; a ``with app.lease()`` block's only
    # while a block runs (listed when recorded, never reported unheld).
    names += [d.name for d in app.leases() if d.leader is not None]
    return names, f"--app {args.app}"


def read(
    args: argparse.Namespace, settings: Settings, wanted: tuple[list[str] | None, str]
) -> st.ClusterStatus:
    with st.connect(st.status_dsn(settings), settings) as conn:
        expected, source = st.declared_leases(conn) if wanted is DECLARED else wanted
        return st.read_cluster(
            conn,
            settings,
            expected=expected,
            expected_source=source,
            all_replicas=args.all_replicas,
            events=0,  # the terminal view has no timeline; the status page does
        )


def cmd_loop(args: argparse.Namespace, settings: Settings) -> int:
    """``status --loop NAME``: one loop's last runs, next fire time and recent runs."""
    with st.connect(st.status_dsn(settings), settings) as conn:
        found = st.read_loop_history(
            conn, loop=args.loop, history=max(0, args.history), all_replicas=args.all_replicas
        )
    if not found:
        print(
            f"loop {args.loop!r}: no run recorded (not declared, never ran, or its history "
            "is older than scheduler.ledger_retention)",
            file=sys.stderr,
        )
        return exit_codes.CHECK_FAILED
    if args.json:
        print(json.dumps({**st.loop_json(found[0])}, indent=2))
    else:
        _print(loop_sections(found[0]))
    return exit_codes.OK


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from(args, unset_secrets="loops")
    if args.loop:
        return cmd_loop(args, settings)
    wanted = expected(args, settings)
    if args.watch:
        return _watch(args, settings, wanted)
    status = read(args, settings, wanted)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        _print(sections(status, args.max_unheld))
    return exit_codes.CHECK_FAILED if status.unheld(args.max_unheld) else exit_codes.OK


def _watch(
    args: argparse.Namespace, settings: Settings, wanted: tuple[list[str] | None, str]
) -> int:
    if args.json:  # one JSON object per line and refresh, for scripts
        code = exit_codes.OK
        try:
            while True:
                status = read(args, settings, wanted)
                code = exit_codes.CHECK_FAILED if status.unheld(args.max_unheld) else exit_codes.OK
                print(json.dumps(status.to_json()), flush=True)
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return code

    if not _have_rich():
        return _watch_text(args, settings, wanted)
    from rich.live import Live
    from rich.text import Text

    code = exit_codes.OK
    with Live(Text("reading status..."), refresh_per_second=4, screen=False) as live:
        try:
            while True:
                try:
                    status = read(args, settings, wanted)
                    code = (
                        exit_codes.CHECK_FAILED if status.unheld(args.max_unheld) else exit_codes.OK
                    )
                    live.update(render(status, args.max_unheld))
                except DatabaseUnavailable as exc:
                    code = exit_codes.CANNOT_START
                    live.update(Text(f"database unavailable: {exc}", style="red"))
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return code


def _print(parts: list[Section]) -> None:
    """Tables drawn by rich when it is installed, else as plain aligned text."""
    if _have_rich():
        from rich.console import Console

        Console(width=None if sys.stdout.isatty() else 160).print(rich_group(parts))
    else:
        sys.stdout.write(plain_text(parts))


def _have_rich() -> bool:
    """rich (the ``demo`` extra) draws the tables; without it they are plain text."""
    return importlib.util.find_spec("rich") is not None


def _watch_text(
    args: argparse.Namespace, settings: Settings, wanted: tuple[list[str] | None, str]
) -> int:
    """``--watch`` without rich: the plain tables again at every refresh."""
    code = exit_codes.OK
    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
    try:
        while True:
            try:
                status = read(args, settings, wanted)
                code = exit_codes.CHECK_FAILED if status.unheld(args.max_unheld) else exit_codes.OK
                text = render_text(status, args.max_unheld)
            except DatabaseUnavailable as exc:
                code = exit_codes.CANNOT_START
                text = f"database unavailable: {exc}\n"
            sys.stdout.write(clear + text + ("" if clear else "\n"))
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return code
