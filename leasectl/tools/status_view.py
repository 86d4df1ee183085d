"""The lease and replica tables: one rendering for ``leasectl status`` and the demo's view.

Pure: :class:`leasectl.status.ClusterStatus` (read by the core) in, a rich renderable out.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from leasectl import status as st


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


def _placement(le: st.LeaseStatus) -> Text:
    """The replica spread placement would choose; flagged when the lease is held elsewhere
    (a hand-over is due, or pending a running tick) or away from its preferred holder."""
    if le.placed_on is None:
        return Text("-")
    if le.away_from_preferred:
        return Text(f"{le.placed_on} (preferred)", style="bold yellow")
    if le.state == "held" and le.holder != le.placed_on:
        return Text(f"{le.placed_on} (moving)", style="yellow")
    return Text(le.placed_on, style="green" if le.holder == le.placed_on else "")


def _loops(status: st.ClusterStatus) -> Table:
    """One row per loop: where and when it last ran (leased loops: the ledger), paused."""
    table = Table(title="loops", title_justify="left")
    for col in ("loop", "placement", "last run", "outcome", "took", "next", "paused"):
        table.add_column(col, no_wrap=col == "loop")
    for lo in status.loops:
        last = lo.last
        ran = "-"
        if last is not None and last.started_at is not None:
            age = (status.taken_at - last.started_at).total_seconds()
            ran = f"{_age(age)} ago on {last.replica}"
        outcome = "-"
        if last:
            triggered = getattr(last, "triggered", False)  # a `leasectl loop trigger` run
            outcome = (last.outcome or "-") + (" (triggered)" if triggered else "")
        paused = Text("-")
        pause = status.paused(lo.loop)
        if pause is not None:
            paused = Text(f"{_age(pause.age_s or None)} {pause.reason}", style="yellow")
        table.add_row(
            lo.loop,
            lo.placement,
            ran,
            Text(outcome, style="red" if last and last.outcome == "failed" else ""),
            f"{last.seconds:.3f}s" if last and last.seconds is not None else "-",
            f"{lo.next_fire_at:%H:%M:%S}" if lo.next_fire_at else "-",
            paused,
        )
    return table


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
        "placement",
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
            _placement(le),
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
        "labels",
    ):
        replicas.add_column(col, no_wrap=col in ("replica", "started"))
    for r in status.replicas:
        alive = (
            Text("standby" if r.standby else "yes", style="green")
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
            ", ".join(r.labels) or "-",
        )
    parts: list[Any] = [leases, replicas]
    for le in status.unheld(max_unheld):
        parts.append(Text(f"! {le.name}: {le.state} — {le.reason}", style="yellow"))
    for le in status.leases:
        if le.away_from_preferred:
            parts.append(
                Text(
                    f"! {le.name}: held by {le.holder}, away from its preferred holder "
                    f"({', '.join(le.preferred)}, live); it moves back at a tick boundary",
                    style="yellow",
                )
            )
    for r in status.replicas:
        if r.wedged:
            parts.append(Text(f"! {r.id}: wedged tick(s): {', '.join(r.wedged)}", style="red"))
    if not status.leases:
        parts.append(Text("no leases expected or recorded yet", style="dim"))
    if status.loops:
        parts.append(_loops(status))
    for p in status.pauses:
        if not p.ended:
            what = "every loop" if p.loop == "*" else p.loop
            until = f", resumes at {p.resume_at:%Y-%m-%d %H:%M:%S %Z}" if p.resume_at else ""
            parts.append(
                Text(
                    f"! {what}: PAUSED by {p.paused_by} {_age(p.age_s)} ago"
                    f"{': ' + p.reason if p.reason else ''}{until}",
                    style="bold yellow",
                )
            )
    if status.rate_limits:
        limits = Table(title="rate limits (shared by the cluster)", title_justify="left")
        for col in ("bucket", "used (of burst)", "backlog", "last used"):
            limits.add_column(col)
        for b in status.rate_limits:
            fill = b["fill"]
            style = "bold red" if fill is not None and fill >= 1 else ""
            limits.add_row(
                b["key"],
                Text(f"{fill:.0%} used" if fill is not None else "not configured", style=style),
                f"{b['backlog_s']:.2f}s",
                str(b["updated_at"] or "-")[11:19],
            )
        parts.append(limits)
    if status.expected_source:
        parts.append(Text(f"expected leases from {status.expected_source}", style="dim"))
    return Group(*parts)
