"""``leasectl loop pause | resume | trigger``: operator control of loops, cluster-wide.

Thin: the rows, the audit and the NOTIFY are :mod:`leasectl.loop_control`'s. Each action names
who did it (``--by``, default ``cli:<OS user>@<host>``) and why (``--reason``); both land in
the lease events table and the replicas' logs. An unknown loop name is refused with the
names the cluster knows (from the replicas' rows, not this host's configuration), exit 2.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta
from typing import Any

from leasectl import loop_control as control
from leasectl import status as st
from leasectl.cli import exit_codes
from leasectl.cli.args import add_argument, add_common, settings_from
from leasectl.errors import ConfigError

_DURATION = re.compile(r"^\+?(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_loop_parser(sub: Any) -> None:
    p = sub.add_parser("loop", help="pause, resume or trigger a loop on every replica")
    actions = p.add_subparsers(dest="loop_command", required=True)

    pause = actions.add_parser("pause", help="pause a loop (or --all) cluster-wide until resumed")
    _common(pause, all_flag=True)
    add_argument(pause, "--reason", env="LOOP_REASON", default="", help="why (shown in status)")
    add_argument(
        pause,
        "--now",
        env="LOOP_PAUSE_NOW",
        action="store_true",
        help="also tell a running tick to stop (ctx.check() raises); default: it finishes",
    )
    pause.set_defaults(handler=cmd_pause)

    resume = actions.add_parser("resume", help="end a loop's pause (or --all's), now or --at")
    _common(resume, all_flag=True)
    add_argument(
        resume,
        "--at",
        env="LOOP_RESUME_AT",
        help="resume later: an ISO 8601 time (2026-12-07T22:00+00:00) or +30m / +2h / +1d",
    )
    resume.set_defaults(handler=cmd_resume)

    trigger = actions.add_parser(
        "trigger", help="run one extra tick now (on the holder, or on every replica)"
    )
    _common(trigger, all_flag=False)
    add_argument(trigger, "--reason", env="LOOP_REASON", default="", help="why (audited)")
    trigger.set_defaults(handler=cmd_trigger)


def _common(p: argparse.ArgumentParser, *, all_flag: bool) -> None:
    add_common(p)
    if all_flag:
        target = p.add_mutually_exclusive_group(required=True)
        target.add_argument("name", nargs="?", help="the loop")
        target.add_argument("--all", action="store_true", help="every loop (a freeze)")
    else:
        p.add_argument("name", help="the loop")
    add_argument(p, "--by", env="LOOP_BY", help="who asks (default: cli:<OS user>@<host>)")


def _target(args: argparse.Namespace) -> str:
    return control.ALL if getattr(args, "all", False) else str(args.name)


def _label(name: str) -> str:
    return "every loop" if name == control.ALL else f"loop {name}"


def cmd_pause(args: argparse.Namespace) -> int:
    settings = settings_from(args, loops=False)
    name = _target(args)
    with st.connect(st.status_dsn(settings), settings, "loop") as conn:
        control.pause(conn, name, by=args.by or st.operator_id(), reason=args.reason, now=args.now)
    running = "running ticks are told to stop" if args.now else "running ticks finish"
    print(f"{_label(name)} paused on every replica ({running}); `leasectl loop resume` ends it")
    return exit_codes.OK


def cmd_resume(args: argparse.Namespace) -> int:
    settings = settings_from(args, loops=False)
    name = _target(args)
    at = parse_time(args.at) if args.at else None
    with st.connect(st.status_dsn(settings), settings, "loop") as conn:
        ended = control.resume(conn, name, by=args.by or st.operator_id(), at=at)
    if ended is None:
        print(f"{_label(name)} is not paused; nothing to resume")
        return exit_codes.CHECK_FAILED
    why = f" ({ended.reason})" if ended.reason else ""
    when = "now" if at is None else f"at {at.isoformat(timespec='seconds')}"
    print(
        f"{_label(name)} resumes {when}: paused by {ended.paused_by}{why} {_age(ended.age_s)} ago"
    )
    return exit_codes.OK


def cmd_trigger(args: argparse.Namespace) -> int:
    settings = settings_from(args, loops=False)
    with st.connect(st.status_dsn(settings), settings, "loop") as conn:
        tid = control.trigger(conn, args.name, by=args.by or st.operator_id(), reason=args.reason)
    print(f"loop {args.name}: trigger {tid} asked for one extra tick")
    return exit_codes.OK


def parse_time(text: str) -> datetime:
    """``--at``: an ISO 8601 time (local time if it names no zone) or ``+<n>s|m|h|d``.

    :raises ConfigError: neither.
    """
    m = _DURATION.match(text.strip())
    if m:
        return datetime.now().astimezone() + timedelta(seconds=float(m[1]) * _UNITS[m[2]])
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--at {text!r}: expected an ISO 8601 time (2026-12-07T22:00+00:00) or a delay "
            "such as +30m, +2h, +1d"
        ) from None
    return at if at.tzinfo is not None else at.astimezone()


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
