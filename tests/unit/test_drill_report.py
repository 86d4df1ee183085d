"""The HTML report (jinja2, inline SVG, no JavaScript) and the JSON document."""

from __future__ import annotations

import json

from leasectl.tools.drill.invariants import Analysis, Check, summarize_rounds
from leasectl.tools.drill.report import render_html, summary_table, timeline, to_json
from leasectl.tools.drill.rounds import RoundResult
from leasectl.tools.drill.runner import DrillOptions, DrillResult
from leasectl.tools.drill.stats import Holding


def result(ok: bool = True) -> DrillResult:
    rounds = [
        RoundResult(0, "kill", "notification_send", "r0", 1, 100.0, takeover_s=0.4, recovered=True),
        RoundResult(1, "stop", "notification_send", "r1", 2, 105.0, t_lift=111.0, recovered=True),
    ]
    hs = [
        Holding("notification_send", "r0", 1, 90.0, 100.0, "lost (capped: SIGKILL)"),
        Holding("notification_send", "r1", 2, 100.4, 110.0, "lost: ttl_expired"),
        Holding("notification_send", "r2", 3, 112.0, 120.0, "open"),
    ]
    analysis = Analysis(
        checks=[Check("no_overlap", ok, "0 overlapping <b>", [] if ok else ["x & y"])],
        holdings=hs,
        overlaps=[],
        duplicates={"allowed": [], "violations": []},
        summary=summarize_rounds(rounds),
        totals={
            "notifications": 3,
            "deliveries": 3,
            "jobs": 1,
            "lost_notifications": 0,
            "lost_jobs": 0,
        },
    )
    return DrillResult(
        options=DrillOptions(),
        skipped={"partition": "network namespaces need root"},
        rounds=rounds,
        analysis=analysis,
        started=90.0,
        finished=120.0,
        replicas=[
            {
                "replica": f"r{i}",
                "slot": i,
                "pid": 1,
                "netns": None,
                "exit": 0,
                "stopped_by_drill": "",
            }
            for i in range(3)
        ],
        lines=[],
    )


def test_html_has_table_svg_and_no_script() -> None:
    html = render_html(result(ok=False))
    assert "<svg" in html and "<rect" in html
    assert "<script" not in html.lower()
    assert "kill" in html and "stop" in html
    assert "network namespaces need root" in html
    assert "0 overlapping &lt;b&gt;" in html  # autoescaped
    assert "FAILED" in html


def test_timeline_geometry() -> None:
    tl = timeline(result(), width=1000)
    (row,) = tl["rows"]
    assert row["lease"] == "notification_send" and len(row["bars"]) == 3
    xs = [b["x"] for b in row["bars"]]
    assert xs == sorted(xs) and xs[0] == tl["left"]
    assert tl["marks"][1]["w"] > 0  # the SIGSTOP is shaded until SIGCONT


def test_json_round_trips() -> None:
    doc = json.loads(json.dumps(to_json(result()), default=str))
    assert [r["kind"] for r in doc["rounds"]] == ["kill", "stop"]
    assert doc["summary"][0]["takeover"]["p99"] == 0.4
    assert summary_table(result()).row_count == 2


def test_longest_notification_delay_per_kind_is_reported() -> None:
    r = result()
    delay = {"p50": 0.3, "p95": 1.0, "p99": 1.2, "max": 1.25, "slowest": "drill-x-n7", "n": 40}
    r.analysis.summary[0]["notification_delay"] = delay
    r.analysis.notification_delay = {"kill": delay, "none": {**delay, "max": 0.2}}
    html = render_html(r)
    assert "1250 ms (drill-x-n7)" in html and "before the\nfirst fault: max 200 ms" in html
    doc = to_json(r)
    assert doc["summary"][0]["notification_delay"]["max"] == 1.25
    assert doc["notification_delay"]["kill"]["slowest"] == "drill-x-n7"
    table = summary_table(r)
    column = next(c for c in table.columns if c.header == "notif. delay p99/max")
    assert list(column.cells) == ["1200 ms / 1250 ms", "–"]
