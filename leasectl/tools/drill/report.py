"""Outputs of a drill: the summary table (rich), ``--json`` and the ``--report`` HTML page.

The HTML page is rendered with jinja2 (autoescaped) and needs no JavaScript: the timeline
is an inline SVG with one row per lease, one bar per holding coloured by replica slot, and
the faults drawn as vertical marks (shaded while a SIGSTOP or a partition lasts).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib import resources
from typing import TYPE_CHECKING, Any

import jinja2
from rich.table import Table

if TYPE_CHECKING:
    from leasectl.tools.drill.runner import DrillResult

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
FAULT_COLOURS = {
    "graceful": "#2ca02c",
    "kill": "#d62728",
    "stop": "#9467bd",
    "terminate": "#ff7f0e",
    "partition": "#8c564b",
    "db-restart": "#1f77b4",
    "db-failover": "#17becf",
    "pooler-restart": "#e377c2",
    "backend-kill-storm": "#7f7f7f",
    "wedge": "#bcbd22",
    "join": "#aec7e8",
}


def ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


def to_json(result: DrillResult) -> dict[str, Any]:
    a = result.analysis
    opts = asdict(result.options)
    opts = {
        k: (str(v) if v is not None and not isinstance(v, int | float | str | list) else v)
        for k, v in opts.items()
    }
    return {
        "options": opts,
        "started": result.started,
        "finished": result.finished,
        "ok": a.ok,
        "skipped": result.skipped,
        "summary": a.summary,
        "totals": a.totals,
        "checks": [asdict(c) for c in a.checks],
        "skipped_checks": a.skipped_checks,
        "liveness": a.liveness,
        "notification_delay": a.notification_delay,
        "rounds": [r.to_json() for r in result.rounds],
        "overlaps": [
            {
                "lease": o.lease,
                "first": [o.first.replica, o.first.epoch],
                "second": [o.second.replica, o.second.epoch],
                "start": o.start,
                "seconds": o.seconds,
            }
            for o in a.overlaps
        ],
        "duplicates": a.duplicates,
        "holdings": [asdict(h) for h in a.holdings],
        "replicas": result.replicas,
        "notes": result.setup_notes,
        # [Idempotency-Key, epoch, replica, arrival, signature ok, status], for re-analysis
        "deliveries": [
            [d.key, d.epoch, d.replica, d.at, d.verified, d.status] for d in result.deliveries
        ],
        # feed row id -> when its insert was acknowledged (the delivery delays' start)
        "inserted_at": result.inserted_at,
    }


def write_json(result: DrillResult, path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(to_json(result), fh, indent=1, default=str)


def summary_table(result: DrillResult) -> Table:
    table = Table(
        title="leasectl drill: takeover after each fault (fault → new holder's acquisition)"
    )
    cols = (
        "fault",
        "rounds",
        "ok",
        "p50",
        "p95",
        "p99",
        "max",
        "first tick p99",
        "self-fence p99",
        "leases back p50/p99/max",
        "repl. lost commits",
        "rebalance join/leave p99",
        "notif. delay p99/max",
        "overlaps",
        "dups",
    )
    for col in cols:
        table.add_column(col, justify="left" if col == "fault" else "right")
    for row in result.analysis.summary:
        t = row["takeover"]
        table.add_row(
            row["kind"],
            str(row["rounds"]),
            str(row["recovered"]),
            ms(t["p50"]),
            ms(t["p95"]),
            ms(t["p99"]),
            ms(t["max"]),
            ms(row["first_tick"]["p99"]),
            ms(row["self_fence"]["p99"]),
            "/".join(ms(row["leases_back"][k]) for k in ("p50", "p99", "max"))
            if row["leases_back"]["max"] is not None
            else "–",
            "–" if row.get("lost_commits") is None else str(row["lost_commits"]),
            _rebalance(row),
            _delay(row),
            str(row["overlaps"]),
            str(row["duplicates"]),
        )
    return table


def _rebalance(row: dict[str, Any]) -> str:
    """``join`` rounds: join -> placement stable, and leave -> stable again (p99)."""
    join, leave = row.get("rebalance") or {}, row.get("rebalance_back") or {}
    if join.get("p99") is None and leave.get("p99") is None:
        return "–"
    return f"{ms(join.get('p99'))} / {ms(leave.get('p99'))}"


def _delay(row: dict[str, Any]) -> str:
    """Notifications delivered after this kind's faults: insert -> first delivery (p99/max)."""
    d = row.get("notification_delay")
    if not d:
        return "–"
    return f"{ms(d.get('p99'))} / {ms(d.get('max'))}"


def checks_table(result: DrillResult) -> Table:
    table = Table(title="invariants")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for c in result.analysis.checks:
        table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAILED[/]", c.detail)
    for name, why in result.analysis.skipped_checks.items():
        table.add_row(name, "[yellow]skipped[/]", why)
    return table


def timeline(result: DrillResult, width: int = 1100) -> dict[str, Any]:
    """Geometry of the SVG timeline (pure)."""
    t0, t1 = result.started, max(result.finished, result.started + 1.0)
    left, row_h, top = 150, 26, 30
    scale = (width - left - 10) / (t1 - t0)
    leases = sorted({h.lease for h in result.analysis.holdings})
    slots: dict[str, int] = {r["replica"]: int(r["slot"]) for r in result.replicas}
    rows = []
    for i, lease in enumerate(leases):
        y = top + i * row_h
        bars = []
        for h in result.analysis.holdings:
            if h.lease != lease:
                continue
            x = left + (h.start - t0) * scale
            w = max(1.0, (h.end - h.start) * scale)
            slot = slots.get(h.replica, 0)
            bars.append(
                {
                    "x": round(x, 1),
                    "w": round(w, 1),
                    "colour": PALETTE[slot % len(PALETTE)],
                    "title": f"{h.replica} epoch {h.epoch}: {h.start - t0:.2f}s → "
                    f"{h.end - t0:.2f}s ({h.end_reason})",
                }
            )
        rows.append({"lease": lease, "y": y, "bars": bars})
    height = top + len(leases) * row_h + 30
    marks = []
    for r in result.rounds:
        x = left + (r.t_fault - t0) * scale
        end = r.t_lift if r.t_lift is not None else r.t_fault
        marks.append(
            {
                "x": round(x, 1),
                "w": round(max(0.0, (end - r.t_fault) * scale), 1),
                "colour": FAULT_COLOURS.get(r.kind, "#000"),
                "title": f"#{r.index} {r.kind} → {r.victim} (takeover {ms(r.takeover_s)})",
                "label": r.kind[0].upper(),
            }
        )
    ticks = []
    span = t1 - t0
    step = next(s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600) if span / s <= 12)
    t = 0.0
    while t <= span:
        ticks.append({"x": round(left + t * scale, 1), "label": f"{int(t)}s"})
        t += step
    legend = sorted(
        {(int(r["slot"]), PALETTE[int(r["slot"]) % len(PALETTE)]) for r in result.replicas}
    )
    return {
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "rows": rows,
        "marks": marks,
        "ticks": ticks,
        "legend": [{"slot": s, "colour": c} for s, c in legend],
        "fault_colours": FAULT_COLOURS,
    }


def render_html(result: DrillResult) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["ms"] = ms
    template = env.from_string(template_text())
    return template.render(
        result=result,
        data=to_json(result),
        tl=timeline(result),
        checks=result.analysis.checks,
    )


def write_html(result: DrillResult, path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render_html(result))


def template_text() -> str:
    return resources.files("leasectl.tools.drill").joinpath("report.html.j2").read_text()
