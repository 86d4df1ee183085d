"""``leasectl status``, ``step-down`` and ``evict``: parsers, handlers and rendering.

Thin: the data comes from :mod:`leasectl.status` as dataclasses; this module only turns
flags into calls and dataclasses into rich tables or JSON.

Exit codes of ``status``: 0 every expected lease is held; 1 a lease is unheld or stale for
more than ``--max-unheld`` seconds; 2 cannot connect or the database is not migrated.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from leasectl import status as st
from leasectl.errors import DatabaseUnavailable
from leasectl.settings import Settings

EXIT_OK, EXIT_UNHELD, EXIT_UNAVAILABLE = 0, 1, 2
Common = Callable[[argparse.ArgumentParser], None]


def _settings(args: argparse.Namespace) -> Settings:
    from leasectl.config import load_settings

    return load_settings(args.config, overrides={"database.dsn": args.dsn} if args.dsn else None)


def _age(seconds: float | None) -> str:
    if seconds is None or math.isinf(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h{seconds % 3600 / 60:02.0f}m"
    return f"{seconds / 86400:.1f}d"


_STATE_STYLE = {"held": "green", "stale": "bold yellow", "free": "bold red"}


def render(status: st.ClusterStatus, max_unheld: float = 0.0) -> Group:
    """The two tables (and the reasons of unhealthy leases) as one renderable."""
    leases = Table(title="leases", title_justify="left", expand=False)
    for col in (
        "lease",
        "state",
        "holder",
        "host",
        "pid",
        "backend",
        "epoch",
        "held for",
        "renewed",
        "waiting",
    ):
        leases.add_column(col, no_wrap=col in ("lease", "state", "holder"))
    for le in status.leases:
        name = le.name if le.expected else f"{le.name} (not configured)"
        leases.add_row(
            name,
            Text(le.state, style=_STATE_STYLE.get(le.state, "")),
            le.holder or "-",
            le.host or "-",
            str(le.pid or "-"),
            str(le.backend_pid or "-"),
            str(le.epoch if le.epoch is not None else "-"),
            _age(le.held_for_s),
            _age(le.renewed_age_s) + " ago" if le.renewed_age_s is not None else "-",
            ", ".join(le.waiting) or "-",
        )
    replicas = Table(title="replicas", title_justify="left")
    for col in (
        "replica",
        "host",
        "pid",
        "version",
        "started",
        "last seen",
        "alive",
        "leases",
        "loops",
        "may lead",
    ):
        replicas.add_column(col, no_wrap=col in ("replica", "started"))
    for r in status.replicas:
        alive = (
            Text("yes", style="green")
            if r.alive
            else Text("stopped" if r.stopped else ("hung" if r.connected else "no"), style="red")
        )
        replicas.add_row(
            r.id,
            r.host,
            str(r.pid),
            r.version,
            r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            _age(r.last_seen_age_s) + " ago",
            alive,
            ", ".join(r.leases) or "-",
            str(len(r.loops)),
            "yes" if r.may_lead else "no",
        )
    parts: list[Any] = [leases, replicas]
    for le in status.unheld(max_unheld):
        parts.append(Text(f"! {le.name}: {le.state} — {le.reason}", style="yellow"))
    if not status.leases:
        parts.append(Text("no leases expected or recorded yet", style="dim"))
    if status.expected_source:
        parts.append(Text(f"expected leases from {status.expected_source}", style="dim"))
    return Group(*parts)


# -- status -------------------------------------------------------------------------------


def register_status(sub: Any, common: Common) -> None:
    from leasectl.cli.args import add_argument

    p = sub.add_parser("status", help="lease and replica status, from the database only")
    common(p)
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
    p.set_defaults(handler=cmd_status)


def read(args: argparse.Namespace, settings: Settings) -> st.ClusterStatus:
    expected, source = st.expected_leases(settings)
    with st.connect(st.status_dsn(settings), settings) as conn:
        return st.read_status(
            conn,
            namespace=settings.leases.namespace,
            lease_ttl=settings.leases.lease_ttl,
            expected=expected,
            all_replicas=args.all_replicas,
            expected_source=source,
        )


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.watch:
        return _watch(args, settings)
    status = read(args, settings)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        Console(width=None if sys.stdout.isatty() else 160).print(render(status, args.max_unheld))
    return EXIT_UNHELD if status.unheld(args.max_unheld) else EXIT_OK


def _watch(args: argparse.Namespace, settings: Settings) -> int:
    from rich.live import Live

    if args.json:  # one JSON object per line and refresh, for scripts
        code = EXIT_OK
        try:
            while True:
                status = read(args, settings)
                code = EXIT_UNHELD if status.unheld(args.max_unheld) else EXIT_OK
                print(json.dumps(status.to_json()), flush=True)
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return code

    code = EXIT_OK
    with Live(Text("reading status..."), refresh_per_second=4, screen=False) as live:
        try:
            while True:
                try:
                    status = read(args, settings)
                    code = EXIT_UNHELD if status.unheld(args.max_unheld) else EXIT_OK
                    live.update(render(status, args.max_unheld))
                except DatabaseUnavailable as exc:
                    code = EXIT_UNAVAILABLE
                    live.update(Text(f"database unavailable: {exc}", style="red"))
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return code


# -- step-down ----------------------------------------------------------------------------


def register_step_down(sub: Any, common: Common) -> None:
    from leasectl.cli.args import add_argument

    p = sub.add_parser(
        "step-down", help="ask a lease's holder to hand it over (NOTIFY) and stay away a while"
    )
    common(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--lease", help="the lease to hand over")
    group.add_argument("--replica", help="hand over every lease this replica holds")
    add_argument(
        p,
        "--cooldown",
        env="STEP_DOWN_COOLDOWN",
        type=float,
        help="seconds the holder stays away (default: its leases.step_down_cooldown)",
    )
    add_argument(
        p,
        "--wait",
        env="STEP_DOWN_WAIT",
        type=float,
        default=5.0,
        help="seconds to wait for the lease to move (0: do not wait)",
    )
    p.set_defaults(handler=cmd_step_down)


def cmd_step_down(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with st.connect(st.status_dsn(settings), settings, "step-down") as conn:
        ns = settings.leases.namespace
        if args.lease is not None:
            current = st.lease_holder(conn, args.lease, ns)
            if current.state == "free":
                print(f"lease {args.lease} is not held; nothing to step down", file=sys.stderr)
                return EXIT_UNHELD
        moves = st.request_step_down_and_wait(
            conn,
            namespace=ns,
            lease=args.lease,
            replica=args.replica,
            cooldown=args.cooldown,
            wait=args.wait,
        )
    if not moves:
        print(f"replica {args.replica} holds no lease; step-down sent anyway", file=sys.stderr)
        return EXIT_UNHELD
    code = EXIT_OK
    for name, (before, after) in sorted(moves.items()):
        if st._moved(before, after):
            print(
                f"{name}: {before.holder} (epoch {before.epoch}) -> {after.holder} "
                f"(epoch {after.epoch})"
            )
        elif args.wait <= 0:
            print(f"{name}: step-down requested from {before.holder}")
        else:
            state = after.holder if after.state == "held" else after.state
            print(f"{name}: not moved within {args.wait:g}s (now {state})", file=sys.stderr)
            code = EXIT_UNHELD
    return code


# -- evict --------------------------------------------------------------------------------


def register_evict(sub: Any, common: Common) -> None:
    from leasectl.cli.args import add_argument

    p = sub.add_parser("evict", help="terminate a lease holder's lock session (after confirmation)")
    common(p)
    p.add_argument("--lease", required=True, help="the lease whose holder to evict")
    add_argument(p, "--yes", env="EVICT_YES", action="store_true", help="do not ask")
    p.set_defaults(handler=cmd_evict)


def cmd_evict(args: argparse.Namespace) -> int:
    settings = _settings(args)
    ns = settings.leases.namespace
    with st.connect(st.status_dsn(settings), settings, "evict") as conn:
        current = st.lease_holder(conn, args.lease, ns)
        if current.backend_pid is None:
            print(f"lease {args.lease} is not held; nothing to evict", file=sys.stderr)
            return EXIT_UNHELD
        who = (
            f"replica {current.holder or '?'} (backend pid {current.backend_pid}, "
            f"epoch {current.epoch}, state {current.state})"
        )
        if not args.yes:
            print(
                f"Evict the holder of lease {args.lease}: {who}?\n"
                "Its lock session is terminated; the replica self-fences and a peer takes over.",
                file=sys.stderr,
            )
            print("Type 'yes' to evict: ", end="", file=sys.stderr, flush=True)
            answer = sys.stdin.readline().strip().lower()
            if answer not in ("y", "yes"):
                print("not evicted", file=sys.stderr)
                return EXIT_UNHELD
        if not st.evict(conn, args.lease, namespace=ns, backend_pid=current.backend_pid):
            print(f"{who} no longer holds {args.lease}; nothing evicted", file=sys.stderr)
            return EXIT_UNHELD
    print(f"evicted {who} from lease {args.lease}")
    return EXIT_OK
