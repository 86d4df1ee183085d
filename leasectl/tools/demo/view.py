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
from leasectl.tools.webhook_sink import Inbox


def view(
    status: st.ClusterStatus,
    counters: Any,
    events: list[Any],
    mail: Inbox,
    hooks: Inbox,
    exited: list[str],
    config_path: Path,
    per_loop: dict[str, tuple[float | None, str | None, int]] | None = None,
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
    # The full lease/replica tables are `leasectl status`; the demo shows where leases are.
    parts: list[Any] = [matrix(status, per_loop or {}), work]
    for le in status.unheld(0.0):
        parts.append(Text(f"! {le.name}: {le.state} — {le.reason}", style="yellow"))
    if exited:
        parts.append(Text("exited: " + ", ".join(exited), style="red"))
    return Group(*parts, instructions(status, config_path), ev)


def matrix(
    status: st.ClusterStatus, per_loop: dict[str, tuple[float | None, str | None, int]]
) -> Table:
    """Leases x replicas: where each lease is (and under which epoch), watched in place.

    A column per replica, live or dead, so a ``kill -9`` shows as a column going red and its
    leases reappearing under the survivors with a higher epoch.
    """
    table = Table(title="leases x replicas", title_justify="left")
    table.add_column("lease", no_wrap=True)
    replicas = sorted(status.replicas, key=lambda r: r.id)
    for r in replicas:
        style = "green" if r.alive else "red"
        label = r.id if r.alive else f"{r.id} ({'stopped' if r.stopped else 'dead'})"
        table.add_column(Text(label, style=style), justify="center")
    for col in ("epoch", "last tick", "by", "delivered"):
        table.add_column(col, justify="right" if col != "by" else "left")
    for le in status.leases:
        cells: list[Any] = []
        for r in replicas:
            if le.state == "held" and le.holder == r.id:
                cells.append(Text("● holds", style="bold green"))
            elif le.name in r.leases:
                cells.append(Text("●", style="yellow"))
            else:
                cells.append("")
        age, by, delivered = per_loop.get(le.name, (None, None, 0))
        table.add_row(
            Text(le.name, style="" if le.state == "held" else "bold red"),
            *cells,
            str(le.epoch if le.epoch is not None else "-"),
            f"{age:.1f}s ago" if age is not None else "-",
            by or "-",
            str(delivered) if delivered else "-",
        )
    return table


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
