"""``leasectl evict``: terminate a lease holder's lock session, after confirmation."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from leasectl import status as st
from leasectl.cli import exit_codes
from leasectl.cli.args import add_argument, add_common, settings_from


def add_evict_parser(sub: Any) -> None:
    p = sub.add_parser("evict", help="terminate a lease holder's lock session (after confirmation)")
    add_common(p)
    p.add_argument("--lease", required=True, help="the lease whose holder to evict")
    add_argument(p, "--yes", env="EVICT_YES", action="store_true", help="do not ask")
    p.set_defaults(handler=cmd_evict)


def cmd_evict(args: argparse.Namespace) -> int:
    settings = settings_from(args, loops=False)  # lease state only: no loop secrets
    ns = settings.leases.namespace
    with st.connect(st.status_dsn(settings), settings, "evict") as conn:
        current = st.lease_holder(conn, args.lease, ns)
        if current.backend_pid is None:
            print(f"lease {args.lease} is not held; nothing to evict", file=sys.stderr)
            return exit_codes.CHECK_FAILED
        who = (
            f"replica {current.holder or '?'} (backend pid {current.backend_pid}, "
            f"epoch {current.epoch}, state {current.state})"
        )
        # The whole lock session goes: every lease it holds moves, not only --lease.
        everything = st.read_status(conn, namespace=ns, lease_ttl=math.inf, expected=[])
        moving = sorted(
            le.name for le in everything.leases if le.backend_pid == current.backend_pid
        ) or [args.lease]
        others = [n for n in moving if n != args.lease]
        also = f" It also holds {', '.join(others)}: they move too." if others else ""
        if not args.yes:
            print(
                f"Evict the holder of lease {args.lease}: {who}?{also}\n"
                "Its lock session is terminated, so every lease it holds moves "
                f"({', '.join(moving)}); peers take them with new epochs at their next "
                "campaign.\nIf that replica is still running, or only stopped "
                "(paused, a long GC), it may go on BELIEVING it holds them for up to "
                "lease_ttl: its writes fenced with a lease's epoch are refused, but its "
                "unfenced side effects (external calls) can overlap the new holders'.",
                file=sys.stderr,
            )
            print("Type 'yes' to evict: ", end="", file=sys.stderr, flush=True)
            answer = sys.stdin.readline().strip().lower()
            if answer not in ("y", "yes"):
                print("not evicted", file=sys.stderr)
                return exit_codes.CHECK_FAILED
        if not st.evict(conn, args.lease, namespace=ns, backend_pid=current.backend_pid):
            print(f"{who} no longer holds {args.lease}; nothing evicted", file=sys.stderr)
            return exit_codes.CHECK_FAILED
    print(f"evicted {who}: its lock session held {', '.join(moving)}, which move to peers")
    return exit_codes.OK
