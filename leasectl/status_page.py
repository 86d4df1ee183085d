"""The status page a replica serves at ``/``: the cluster read model as one HTML document.

Pure: a :class:`~leasectl.status.ClusterStatus` (the model ``leasectl status`` renders as a
table) and this replica's identity in, a page out. The template and style sheet are package
data (``leasectl/web``); the page loads nothing else, runs no JavaScript and refreshes itself
with a ``<meta http-equiv="refresh">``. Every value is HTML-escaped, the DSN is redacted by
the reader, and tick errors are cut short and stripped of anything that looks like a
password: the page shows host and loop names, so expose it only behind an authenticating
proxy (docs/operator/status-page.md).

Stable hooks for scripts and the browser test: ``tr#lease-<name>`` carries ``data-holder`` and
``data-epoch``; ``tr#loop-<name>`` carries ``data-paused`` (the reason) when paused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from html import escape
from importlib import resources
from string import Template
from typing import Any

from leasectl.status import ClusterStatus, LeaseStatus, ReplicaStatus

_SECRETS = re.compile(
    r"(password|passwd|pwd|secret|token|api[_-]?key)(\s*[=:]\s*)(\S+)|(://[^/\s:@]*:)([^@\s/]+)(@)",
    re.IGNORECASE,
)
_OPERATOR_EVENTS = ("loop_paused", "loop_resumed", "loop_triggered", "step_down_requested")


@cache
def _template() -> tuple[Template, str]:
    web = resources.files("leasectl.web")
    return (
        Template(web.joinpath("status.html").read_text(encoding="utf-8")),
        web.joinpath("status.css").read_text(encoding="utf-8"),
    )


def render_page(status: ClusterStatus, identity: Mapping[str, Any], *, refresh: int = 5) -> str:
    """The whole page. ``identity``: this replica (id, host, pid, version, ...), shown as is."""
    template, css = _template()
    unheld = status.unheld()
    if unheld:
        summary, cls = f"{len(unheld)} of {len(status.leases)} leases unheld", "bad"
    else:
        summary, cls = f"all {len(status.leases)} leases held", "ok"
    paused = [lo.loop for lo in status.loops if status.paused(lo.loop) is not None]
    if paused:
        summary += f"; {len(paused)} loop{'s' if len(paused) != 1 else ''} paused"
        cls = cls if cls == "bad" else "warn"
    return template.substitute(
        title=escape(f"leasectl — {summary}"),
        refresh=str(int(refresh)),
        css=css,
        summary=escape(summary),
        summary_class=cls,
        taken_at=escape(status.taken_at.strftime("%Y-%m-%d %H:%M:%S %Z")),
        replica=escape(str(identity.get("replica", "?"))),
        banners=_banners(status),
        leases=_leases(status.leases, status.replicas),
        loops=_loops(status),
        limits=_limits(status.rate_limits),
        events=_events(status),
        identity=_identity(identity, status.database),
    )


def error_page(message: str, identity: Mapping[str, Any], *, refresh: int = 5) -> str:
    """The page when the database cannot be read: says so, and refreshes until it can."""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="refresh" content="{int(refresh)}"><title>leasectl — unavailable'
        f'</title></head><body><h1>leasectl</h1><p id="error">{escape(redact(message, 500))}</p>'
        f"{_identity(identity, '')}</body></html>"
    )


def redact(text: str, limit: int = 200) -> str:
    """Text shown on the page (a tick's error): secrets masked, cut to ``limit`` characters."""
    masked = _SECRETS.sub(
        lambda m: f"{m[1]}{m[2]}***" if m[1] else f"{m[4]}***{m[6]}", " ".join(text.split())
    )
    return masked if len(masked) <= limit else masked[: limit - 1] + "…"


# -- parts --------------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None or math.isinf(seconds):
        return "–"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    return f"{seconds / 86400:.1f}d"


def _since(now: datetime, then: datetime | None) -> str:
    return _age((now - then).total_seconds()) if then is not None else "–"


def _time(at: datetime | None) -> str:
    return at.strftime("%H:%M:%S") if at is not None else "–"


def _banners(status: ClusterStatus) -> str:
    out = []
    for p in status.pauses:
        if p.ended:
            continue
        what = "Every loop" if p.loop == "*" else f"Loop <b>{escape(p.loop)}</b>"
        until = f"; resumes at {escape(_time(p.resume_at))}" if p.resume_at else ""
        why = f": {escape(p.reason)}" if p.reason else ""
        out.append(
            f'<div class="banner" data-pause="{escape(p.loop)}">{what} paused by '
            f"{escape(p.paused_by)} {_age(p.age_s)} ago{why}{until}</div>"
        )
    for le in status.unheld():
        out.append(
            f'<div class="banner bad">Lease <b>{escape(le.name)}</b> is {escape(le.state)}: '
            f"{escape(le.reason)}</div>"
        )
    for r in status.replicas:
        if r.wedged:
            out.append(
                f'<div class="banner bad">Replica {escape(r.id)}: wedged tick(s) '
                f"{escape(', '.join(r.wedged))}</div>"
            )
    return "\n".join(out)


def _leases(leases: Sequence[LeaseStatus], replicas: Sequence[ReplicaStatus]) -> str:
    """One row per lease, one column per replica: who holds it, who is next, who it prefers."""
    shown = [r for r in replicas if r.alive or any(le.holder == r.id for le in leases)]
    head = "".join(
        f'<th title="{escape(r.host)} pid {r.pid}">{escape(r.id)}'
        f"{'' if r.alive else ' <span class=bad>(down)</span>'}</th>"
        for r in shown
    )
    rows = []
    for le in leases:
        state_cls = {"held": "ok", "stale": "warn"}.get(le.state, "bad")
        cells = []
        for r in shown:
            marks = []
            if le.holder == r.id and le.state != "free":
                marks.append(f'<span class="chip holder">holder e{le.epoch}</span>')
            if le.heir == r.id:
                marks.append('<span class="chip">heir</span>')
            if r.id in le.preferred:
                marks.append('<span class="chip">preferred</span>')
            if le.placed_on == r.id and le.holder != r.id:
                marks.append('<span class="chip">placed here</span>')
            cells.append(f'<td class="cell">{" ".join(marks)}</td>')
        held = _age(le.held_for_s) if le.state != "free" else _age(le.unheld_for_s) + " unheld"
        epoch = str(le.epoch) if le.epoch is not None else ""
        extra = "" if le.expected else ' <span class="dim">(not configured)</span>'
        rows.append(
            f'<tr id="lease-{escape(le.name)}" data-holder="{escape(le.holder or "")}" '
            f'data-epoch="{epoch}"><td><b>{escape(le.name)}</b>{extra}</td>'
            f'<td class="{state_cls}">{escape(le.state)}</td>'
            f"<td>{escape(le.holder or '–')}</td><td>{epoch or '–'}</td>"
            f"<td>{held}</td>{''.join(cells)}</tr>"
        )
    if not rows:
        return '<p class="dim">No leases expected or recorded yet.</p>'
    return (
        "<table><thead><tr><th>lease</th><th>state</th><th>holder</th><th>epoch</th>"
        f"<th>held for</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _loops(status: ClusterStatus) -> str:
    rows = []
    for lo in status.loops:
        last = lo.last
        if last is not None:
            ago = _since(status.taken_at, last.started_at)
            ran = f"{ago} ago on {escape(last.replica)}"
            what = last.outcome or "running"
            outcome_cls = {"ok": "ok", "running": "dim"}.get(what, "bad")
            outcome = f'<span class="{outcome_cls}">{escape(what)}</span>'
            if getattr(last, "triggered", False):  # a `leasectl loop trigger` run
                outcome += ' <span class="chip">triggered</span>'
            if last.error:
                outcome += f' <span class="dim">{escape(redact(last.error))}</span>'
            took = f"{last.seconds:.3f}s" if last.seconds is not None else "–"
        else:
            ran, outcome, took = "–", '<span class="dim">not run yet</span>', "–"
        paused_attr, paused, flag = "", "–", ""
        p = status.paused(lo.loop)
        if p is not None:
            flag = ' <span class="chip paused">paused</span>'  # visible without scrolling
            paused_attr = f' data-paused="{escape(p.reason or "paused")}"'
            paused = (
                f"{escape(p.reason) or 'paused'} "
                f'<span class="dim">by {escape(p.paused_by)}, {_age(p.age_s)} ago</span>'
            )
        fires = "–" if p is not None else _time(lo.next_fire_at)  # paused: it will not fire
        wedged = (
            f'<span class="bad">{escape(", ".join(lo.wedged_on))}</span>' if lo.wedged_on else "–"
        )
        rows.append(
            f'<tr id="loop-{escape(lo.loop)}"{paused_attr}><td><b>{escape(lo.loop)}</b>{flag}</td>'
            f"<td>{escape(lo.placement)}</td><td>{ran}</td><td>{outcome}</td><td>{took}</td>"
            f"<td>{fires}</td><td>{paused}</td><td>{wedged}</td></tr>"
        )
    if not rows:
        return '<p class="dim">No loops registered yet.</p>'
    return (
        "<table><thead><tr><th>loop</th><th>placement</th><th>last run</th><th>outcome</th>"
        "<th>took</th><th>next fire</th><th>paused</th><th>wedged on</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _limits(buckets: Sequence[Mapping[str, Any]]) -> str:
    if not buckets:
        return ""
    rows = []
    for b in buckets:
        fill = b.get("fill")
        if fill is None:
            meter = '<span class="dim">not configured</span>'
        else:
            full = " full" if fill >= 1 else ""
            meter = (
                f'<span class="meter{full}"><span style="width:{min(fill, 1) * 100:.0f}%">'
                f"</span></span> {fill:.0%} used, {1 - min(fill, 1):.0%} available"
            )
        rows.append(
            f"<tr><td>{escape(str(b['key']))}</td><td>{meter}</td>"
            f"<td>{float(b['backlog_s']):.2f}s</td></tr>"
        )
    return (
        "<h2>Rate limits</h2><div class=scroll><table><thead><tr><th>bucket</th>"
        "<th>burst used</th><th>backlog</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _events(status: ClusterStatus) -> str:
    if not status.events:
        return '<p class="dim">No events yet.</p>'
    items = []
    for e in status.events:
        kind = "op" if e.event in _OPERATOR_EVENTS else e.event
        epoch = f" e{e.epoch}" if e.epoch is not None else ""
        what = e.event.removeprefix("loop_").replace("_", " ")
        subject = "every loop" if e.lease in ("*", "") else e.lease
        reason = f' <span class="dim">— {escape(redact(e.reason))}</span>' if e.reason else ""
        items.append(
            f'<li class="{escape(kind)}"><span class="dim">{_time(e.at)}</span> '
            f"<b>{escape(subject)}</b>{epoch} {escape(what)} by {escape(e.replica)}{reason}</li>"
        )
    return f'<ol class="timeline">{"".join(items)}</ol>'


def _identity(identity: Mapping[str, Any], database: str) -> str:
    rows = [(k.replace("_", " "), v) for k, v in identity.items()]
    rows.append(("database", database or "–"))
    items = []
    for key, value in rows:
        text = ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        items.append(f"<dt>{escape(key)}</dt><dd>{escape(text or '–')}</dd>")
    return f'<dl class="identity">{"".join(items)}</dl>'
