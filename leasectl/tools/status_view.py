"""The lease and replica tables: one rendering for ``leasectl status`` and the demo's view.

Pure: :class:`leasectl.status.ClusterStatus` (read by the core) in, the tables out: as a rich
renderable (:func:`render`, the demo and ``status --watch``) or as plain aligned text
(:func:`render_text`, ``leasectl status`` when rich, the ``demo`` extra, is not installed).
Both draw the same cells: text with a style name that only rich shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from leasectl import status as st
from leasectl.loop_control import Pause

if TYPE_CHECKING:
    from rich.console import Group


class Cell(NamedTuple):
    text: str
    style: str = ""


class Section(NamedTuple):
    """A titled table, or (no columns) a line of text."""

    title: str
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[Cell, ...], ...] = ()
    style: str = ""


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


def _placement(le: st.LeaseStatus) -> Cell:
    """The replica spread placement would choose; flagged when the lease is held elsewhere
    (a hand-over is due, or pending a running tick) or away from its preferred holder."""
    if le.placed_on is None:
        return Cell("-")
    if le.away_from_preferred:
        return Cell(f"{le.placed_on} (preferred)", "bold yellow")
    if le.state == "held" and le.holder != le.placed_on:
        return Cell(f"{le.placed_on} (moving)", "yellow")
    return Cell(le.placed_on, "green" if le.holder == le.placed_on else "")


_LEASE_COLUMNS = (
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
)
_REPLICA_COLUMNS = (
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
)
_NO_WRAP = ("lease", "state", "holder", "replica", "started")


def _row(*cells: str | Cell) -> tuple[Cell, ...]:
    return tuple(c if isinstance(c, Cell) else Cell(c) for c in cells)


def sections(status: st.ClusterStatus, max_unheld: float = 0.0) -> list[Section]:
    """The tables and the reasons of unhealthy leases, in display order."""
    leases = tuple(
        _row(
            le.name if le.expected else f"{le.name} (not configured)",
            Cell(le.state, _STATE_STYLE.get(le.state, "")),
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
        for le in status.leases
    )
    replicas = tuple(
        _row(
            r.id,
            r.host,
            str(r.pid),
            r.version,
            r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            _age(r.last_seen_age_s) + " ago",
            Cell("standby" if r.standby else "yes", "green")
            if r.alive
            else Cell("stopped" if r.stopped else ("hung" if r.connected else "no"), "red"),
            ", ".join(r.leases) or "-",
            str(len(r.loops)),
            "yes" if r.may_lead else "no",
            ", ".join(r.labels) or "-",
        )
        for r in status.replicas
    )
    out = [
        Section("leases", _LEASE_COLUMNS, leases),
        Section("replicas", _REPLICA_COLUMNS, replicas),
    ]
    for le in status.unheld(max_unheld):
        out.append(Section(f"! {le.name}: {le.state} — {le.reason}", style="yellow"))
    for le in status.leases:
        if le.away_from_preferred:
            out.append(
                Section(
                    f"! {le.name}: held by {le.holder}, away from its preferred holder "
                    f"({', '.join(le.preferred)}, live); it moves back at a tick boundary",
                    style="yellow",
                )
            )
    for r in status.replicas:
        if r.wedged:
            out.append(Section(f"! {r.id}: wedged tick(s): {', '.join(r.wedged)}", style="red"))
    if not status.leases:
        out.append(Section("no leases expected or recorded yet", style="dim"))
    for p in status.pauses:
        if not p.ended:
            what = "every loop" if p.loop == "*" else p.loop
            until = f", resumes at {p.resume_at:%Y-%m-%d %H:%M:%S %Z}" if p.resume_at else ""
            why = f": {p.reason}" if p.reason else ""
            out.append(
                Section(
                    f"! {what}: PAUSED by {p.paused_by} {_age(p.age_s)} ago{why}{until}",
                    style="bold yellow",
                )
            )
    if status.rate_limits:
        rows = []
        for b in status.rate_limits:
            fill = b["fill"]
            rows.append(
                _row(
                    b["key"],
                    Cell(
                        f"{fill:.0%} used" if fill is not None else "not configured",
                        "bold red" if fill is not None and fill >= 1 else "",
                    ),
                    f"{b['backlog_s']:.2f}s",
                    str(b["updated_at"] or "-")[11:19],
                )
            )
        out.append(
            Section(
                "rate limits (shared by the cluster)",
                ("bucket", "used (of burst)", "backlog", "last used"),
                tuple(rows),
            )
        )
    if status.loops:
        out.append(_loops_table(status.loops, status.taken_at, status.paused))
    if status.expected_source:
        out.append(Section(f"expected leases from {status.expected_source}", style="dim"))
    return out


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
) -> Section:
    """Per loop (everywhere loops: per replica): where and when it last ran, for how long,
    the outcome, the last error, the next fire time in the loop's zone, wedged, paused."""
    rows = []
    for h in loops:
        runs = h.runs[:1] if h.placement == "leased" else [r for r in h.runs if r.live]
        for run in runs or h.runs[:1]:
            outcome = Cell(run.outcome or "-", _OUTCOME_STYLE.get(run.outcome or "", ""))
            if run.wedged and run.live:
                outcome = Cell("WEDGED", "bold red")
            next_fire = h.next_fire_at if h.placement == "leased" else run.next_fire_at
            rows.append(
                _row(
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
            )
    columns = ("loop", "schedule", "ran on", "last run", "took", "outcome", "next fire",
               "last error", "paused")  # fmt: skip
    return Section("loops (last run, next fire)", columns, tuple(rows))


def _paused(pause: Pause | None) -> Cell:
    if pause is None:
        return Cell("-")
    return Cell(f"{_age(pause.age_s or None)} ago: {pause.reason or 'paused'}", "yellow")


def loop_sections(h: st.LoopHistory) -> list[Section]:
    """``leasectl status --loop NAME``: the loop's last run per replica and its recent slots."""
    now = datetime.now(UTC)
    out = [
        Section(f"{h.loop}: {h.placement}, {h.schedule}; next fire {_local(h.next_fire_at)}"),
        _loops_table([h], now),
    ]
    if h.wedged_on:
        out.append(Section(f"! wedged on: {', '.join(h.wedged_on)}", style="red"))
    for run in h.runs:
        if run.last_error:
            out.append(
                Section(
                    f"last error on {run.replica} ({_local(run.last_error_at)}): {run.last_error}"
                )
            )
    if h.recent:
        zone = h.next_fire_at.tzinfo if h.next_fire_at is not None else UTC
        rows = tuple(
            _row(
                _local(t.tick_at.astimezone(zone)),
                t.replica,
                str(t.epoch),
                _when(t.started_at, now),
                f"{t.seconds:.3f}s" if t.seconds is not None else "-",
                Cell(
                    t.outcome + (" (triggered)" if t.triggered else ""),
                    _OUTCOME_STYLE.get(t.outcome, ""),
                ),
                str(t.attempts),
                _error(t.error),
            )
            for t in h.recent
        )
        columns = ("slot", "replica", "epoch", "started", "took", "outcome", "attempts", "error")
        out.append(Section("recent runs (tick ledger, newest first)", columns, rows))
    elif h.placement == "everywhere":
        out.append(Section("everywhere loops keep only their last run per replica", style="dim"))
    return out


def render(status: st.ClusterStatus, max_unheld: float = 0.0) -> Group:
    """The tables (and the reasons of unhealthy leases) as one rich renderable."""
    return rich_group(sections(status, max_unheld))


def render_loop(h: st.LoopHistory) -> Group:
    """``leasectl status --loop NAME`` as one rich renderable."""
    return rich_group(loop_sections(h))


def rich_group(parts: Sequence[Section]) -> Group:
    """Sections drawn by rich: tables with their styles."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    drawn: list[Any] = []
    for s in parts:
        if not s.columns:
            drawn.append(Text(s.title, style=s.style))
            continue
        table = Table(title=s.title, title_justify="left", expand=False)
        for col in s.columns:
            table.add_column(col, no_wrap=col in _NO_WRAP)
        for row in s.rows:
            table.add_row(*(Text(c.text, style=c.style) for c in row))
        drawn.append(table)
    return Group(*drawn)


def render_text(status: st.ClusterStatus, max_unheld: float = 0.0) -> str:
    """The same tables as plain aligned columns (no rich needed)."""
    return plain_text(sections(status, max_unheld))


def plain_text(parts: Sequence[Section]) -> str:
    """Sections as plain aligned columns."""
    lines: list[str] = []
    for s in parts:
        if not s.columns:
            lines.append(s.title)
            continue
        widths = [
            max(len(col), *(len(row[i].text) for row in s.rows)) if s.rows else len(col)
            for i, col in enumerate(s.columns)
        ]
        lines.append(s.title)
        for row in [tuple(Cell(c) for c in s.columns), *s.rows]:
            lines.append("  ".join(c.text.ljust(w) for c, w in zip(row, widths, strict=True)))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
