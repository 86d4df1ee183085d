"""``leasectl step-down``: ask a lease's holder to hand it over (NOTIFY) and stay away a while."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from leasectl import status as st
from leasectl.cli import exit_codes
from leasectl.cli.args import add_argument, add_common, settings_from


def add_step_down_parser(sub: Any) -> None:
    p = sub.add_parser(
        "step-down", help="ask a lease's holder to hand it over (NOTIFY) and stay away a while"
    )
    add_common(p)
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
    settings = settings_from(args, loops=False)  # lease state only: no loop secrets
    with st.connect(st.status_dsn(settings), settings, "step-down") as conn:
        ns = settings.leases.namespace
        if args.lease is not None:
            current = st.lease_holder(conn, args.lease, ns)
            if current.state == "free":
                print(f"lease {args.lease} is not held; nothing to step down", file=sys.stderr)
                return exit_codes.CHECK_FAILED
        moves = st.request_step_down_and_wait(
            conn,
            namespace=ns,
            lease=args.lease,
            replica=args.replica,
            cooldown=args.cooldown,
            wait=args.wait,
        )
        away = {
            name: st.step_down_cooldowns(conn, name, settings.leases.step_down_cooldown)
            for name, (before, after) in moves.items()
            if not st._moved(before, after) and args.wait > 0
        }
    if not moves:
        print(
            f"replica {args.replica} holds no lease: nothing moved (it is still asked to stay "
            "away from every lease for the cooldown)",
            file=sys.stderr,
        )
        return exit_codes.CHECK_FAILED
    code = exit_codes.OK
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
            for rid, until in away.get(name, []):
                left = (until - datetime.now(UTC)).total_seconds()
                print(
                    f"  {rid} stays away from {name} after a step-down until "
                    f"{until.astimezone():%H:%M:%S} ({left:.0f}s from now)",
                    file=sys.stderr,
                )
            if after.state == "free" and away.get(name):
                print(
                    f"  {name} is taken when a candidate's cooldown ends, or by a replica that "
                    "is not in one",
                    file=sys.stderr,
                )
            code = exit_codes.CHECK_FAILED
    return code
