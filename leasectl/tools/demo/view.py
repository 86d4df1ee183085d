"""What ``leasectl demo`` shows: the status tables, what the loops did, how to break things.

Private to :mod:`leasectl.tools.demo`; pure rendering of data the demo collected.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from leasectl import status as st
from leasectl.tools.status_view import render
from leasectl.tools.webhook_sink import Inbox


def view(
    status: st.ClusterStatus,
    counters: Any,
    events: list[Any],
    mail: Inbox,
    hooks: Inbox,
    exited: list[str],
    config_path: Path,
) -> Group:
    """The live view: leases and replicas, work done, exited replicas, what to try, events."""
    jobs_done, jobs_total, versions, sent, notes, crl = counters or (0,) * 6
    work = Text(
        f"loops: jobs {jobs_done}/{jobs_total} completed, {versions} certificate versions, "
        f"notifications {sent}/{notes} sent, CRL number {crl}\n"
        f"sinks: {mail.received} emails ({mail.duplicates} duplicate), "
        f"{hooks.received} webhooks ({hooks.duplicates} duplicate, {hooks.bad} bad signature)"
    )
    ev = Table(title="recent lease events", title_justify="left")
    for col in ("at", "lease", "epoch", "replica", "event", "reason"):
        ev.add_column(col)
    for row in events:
        ev.add_row(*(str(v) if v is not None else "-" for v in row))
    parts: list[Any] = [render(status), work]
    if exited:
        parts.append(Text("exited: " + ", ".join(exited), style="red"))
    return Group(*parts, instructions(status, config_path), ev)


def instructions(status: st.ClusterStatus | None, config_path: Path) -> Text:
    """How to kill the current holder and watch its leases move."""
    holder = None
    if status is not None:
        holder = next((le for le in status.leases if le.state == "held" and le.pid), None)
    pid = str(holder.pid) if holder else "<pid>"
    who = f"  # {holder.holder} holds {holder.name}" if holder else ""
    cfg = f"--config {config_path}"
    prog = sys.argv[0] if sys.argv[0].endswith("leasectl") else "leasectl"
    return Text(
        "Try, in another terminal:\n"
        f"  kill -9 {pid}{who}\n"
        "      a crash: the server drops its session and a peer takes the lease in < 1 s\n"
        f"  kill -STOP {pid}; sleep 10; kill -CONT {pid}\n"
        "      a hang: peers evict it after lease_ttl + eviction_grace (7 s)\n"
        f"  {prog} step-down --lease notification_send {cfg}\n"
        f"  {prog} status --watch {cfg}\n"
        "Ctrl-C stops everything.",
        style="cyan",
    )


def summary_line(status: st.ClusterStatus | None, elapsed: float, mail: Inbox, hooks: Inbox) -> str:
    """One line per refresh when the output is not a terminal (logs, tests)."""
    if status is None:
        return f"t={elapsed:4.1f}s waiting for the database"
    leases = " ".join(
        f"{le.name}={le.holder}#{le.epoch}" if le.state == "held" else f"{le.name}={le.state}"
        for le in status.leases
    )
    return f"t={elapsed:4.1f}s {leases} | emails {mail.received} webhooks {hooks.received}"
