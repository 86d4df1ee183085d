"""The lease and replica tables: one rendering for ``leasectl status`` and the demo's view.

Pure: :class:`leasectl.status.ClusterStatus` (read by the core) in, a rich renderable out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from leasectl import status as st
from leasectl.control import Pause


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
    if status.loops:
        parts.append(_loops_table(status.loops, status.taken_at, status.paused))
    if status.expected_source:
        parts.append(Text(f"expected leases from {status.expected_source}", style="dim"))
    return Group(*parts)


_OUTCOME_STYLE = {"ok": "green", "failed": "bold red", "lost": "yellow", "cancelled": "yellow"}


def _when(at: datetime | None, now: datetime) -> str:
    return "-" if at is None else _age((now - at).total_seconds()) + " ago"


def _local(at: datetime | None) -> str:
    return "-" if at is None else at.strftime("%Y-%m-%d %H:%M:%S %Z")


def _error(text: str | None, width: int = 60) -> str:
    if not text:
        return "-"
    line = text.strip().splitlines()[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def _loops_table(
    loops: list[st.LoopHistory],
    now: datetime,
    paused: Callable[[str], Pause | None] = lambda loop: None,
) -> Table:
    """Per loop (everywhere loops: per replica): where and when it last ran, for how long,
    the outcome, the last error, the next fire time in the loop's zone, wedged, paused."""
    table = Table(title="loops (last run, next fire)", title_justify="left")
    for col in ("loop", "schedule", "ran on", "last run", "took", "outcome", "next fire",
                "last error", "paused"):  # fmt: skip
        table.add_column(col)
    for h in loops:
        runs = h.runs[:1] if h.placement == "leased" else [r for r in h.runs if r.live]
        for run in runs or h.runs[:1]:
            outcome = Text(run.outcome or "-", style=_OUTCOME_STYLE.get(run.outcome or "", ""))
            if run.wedged and run.live:
                outcome = Text("WEDGED", style="bold red")
            next_fire = h.next_fire_at if h.placement == "leased" else run.next_fire_at
            table.add_row(
                h.loop,
                h.schedule,
                run.replica,
                _when(run.started_at, now),
                f"{run.seconds:.3f}s" if run.seconds is not None else "-",
                outcome,
                _local(next_fire),
                _error(run.last_error),
                _paused(paused(h.loop)),
            )
    return table


def _paused(pause: Pause | None) -> Text:
    if pause is None:
        return Text("-")
    return Text(f"{_age(pause.age_s or None)} ago: {pause.reason or 'paused'}", style="yellow")


def render_loop(h: st.LoopHistory) -> Group:
    """``leasectl status --loop NAME``: the loop's last run per replica and its recent slots."""
    now = datetime.now(UTC)
    parts: list[Any] = [
        Text(f"{h.loop}: {h.placement}, {h.schedule}; next fire {_local(h.next_fire_at)}"),
        _loops_table([h], now),
    ]
    if h.wedged_on:
        parts.append(Text(f"! wedged on: {', '.join(h.wedged_on)}", style="red"))
    for run in h.runs:
        if run.last_error:
            parts.append(
                Text(f"last error on {run.replica} ({_local(run.last_error_at)}): {run.last_error}")
            )
    if h.recent:
        ticks = Table(title="recent runs (tick ledger, newest first)", title_justify="left")
        for col in ("slot", "replica", "epoch", "started", "took", "outcome", "attempts", "error"):
            ticks.add_column(col)
        zone = h.next_fire_at.tzinfo if h.next_fire_at is not None else UTC
        for t in h.recent:
            ticks.add_row(
                _local(t.tick_at.astimezone(zone)),
                t.replica,
                str(t.epoch),
                _when(t.started_at, now),
                f"{t.seconds:.3f}s" if t.seconds is not None else "-",
                Text(t.outcome, style=_OUTCOME_STYLE.get(t.outcome, "")),
                str(t.attempts),
                _error(t.error),
            )
        parts.append(ticks)
    elif h.placement == "everywhere":
        parts.append(Text("everywhere loops keep only their last run per replica", style="dim"))
    return Group(*parts)
