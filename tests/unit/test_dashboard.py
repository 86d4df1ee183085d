"""The shipped Grafana dashboard and alert rules read only metrics leasectl exports.

A dashboard panel or an alert over a misspelt metric or label shows "no data" / never fires,
silently. These tests pull every series selector and grouping label out of the PromQL in
``docs/operator/grafana-dashboard.json`` and ``docs/operator/alerts.yaml`` and look each one
up in the exposition of leasectl's own registry after :func:`leasectl.metrics.declare` over
the real loops (the live ``/metrics`` of running replicas is compared the same way in
``tests/integration/test_alerts.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docs/operator/grafana-dashboard.json"
ALERTS = REPO / "docs/operator/alerts.yaml"

#: Labels Prometheus attaches to every scraped series (target labels), never in /metrics.
TARGET_LABELS = frozenset({"instance", "job"})
#: Series that exist only after an event, not from the start: the fencing epoch is known once
#: this replica acquired the lease (the live replicas of the integration test have one).
AFTER_FIRST_ACQUISITION: dict[str, tuple[str, ...]] = {"leasectl_lease_epoch": ("lease",)}
#: Series Prometheus itself synthesises for each target.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_AGGREGATORS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ]
)
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_BINARY_WORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2"})
_TOKEN = re.compile(
    r"""(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      |(?P<range>\[[^\]]*\])
      |(?P<dur>(?:\d+(?:ms|[smhdwy]))+(?![\w:]))
      |(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?(?![\w:]))
      |(?P<ident>[A-Za-z_:][\w:]*)
      |(?P<op>=~|!~|!=|==|>=|<=|[=<>(){},+\-*/%^])
      |(?P<ws>\s+)""",
    re.X,
)
_GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__[a-z_]+\}")


@dataclass
class Selector:
    """One series selector: ``name{label op "value", ...}``."""

    name: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class Parsed:
    selectors: list[Selector]
    grouping: set[str]  # labels named in by / without / on / ignoring / group_left / ...


def parse_promql(expr: str) -> Parsed:
    """Series selectors and grouping labels of a PromQL expression (enough of the grammar
    for the shipped rules and panels; anything it does not understand fails loudly)."""
    expr = _GRAFANA_INTERVALS.sub("5m", expr)
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot tokenize {expr[pos : pos + 20]!r} in {expr!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append((kind, m.group()))
    selectors: list[Selector] = []
    grouping: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in _GROUPING:
            if nxt == "(":
                j = i + 2
                while tokens[j][1] != ")":
                    if tokens[j][0] == "ident":
                        grouping.add(tokens[j][1])
                    j += 1
                i = j + 1
                continue
            i += 1
            continue
        if kind == "ident" and (nxt == "(" or text in _AGGREGATORS or text in _BINARY_WORDS):
            i += 1  # a function, an aggregation or an operator word
            continue
        if kind == "ident":
            sel = Selector(text)
            i += 1
            if nxt == "{":
                i += 1
                while tokens[i][1] != "}":
                    if tokens[i][1] == ",":
                        i += 1
                        continue
                    label, op, value = tokens[i][1], tokens[i + 1][1], tokens[i + 2][1]
                    sel.matchers.append((label, op, value[1:-1]))
                    i += 3
                i += 1
            selectors.append(sel)
            continue
        if text == "{":
            raise ValueError(f"selectors without a metric name are not supported: {expr!r}")
        i += 1
    return Parsed(selectors, grouping)


def exposition_index(text: str) -> dict[str, list[dict[str, str]]]:
    """Sample name → the label sets it is exported with (``_bucket``, ``_count`` included)."""
    index: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            index.setdefault(sample.name, []).append(dict(sample.labels))
    return index


def problems(
    expr: str,
    index: dict[str, list[dict[str, str]]],
    *,
    allow: dict[str, tuple[str, ...]] | None = None,
) -> list[str]:
    """What in ``expr`` does not exist in ``index`` (empty when everything does); metrics in
    ``allow`` (name → its labels) may be missing."""
    allow = allow or {}
    parsed = parse_promql(expr)
    out: list[str] = []
    known_labels = set(TARGET_LABELS)
    for sel in parsed.selectors:
        if sel.name in SYNTHETIC:
            continue
        if sel.name in allow and sel.name not in index:
            known_labels |= set(allow[sel.name])
            continue
        series = index.get(sel.name)
        if not series:
            out.append(f"metric {sel.name} is not exported")
            continue
        labels = set().union(*(s.keys() for s in series))
        known_labels |= labels
        for label, op, value in sel.matchers:
            if label in TARGET_LABELS:
                continue
            if label not in labels:
                out.append(f"{sel.name} has no label {label!r} (it has {sorted(labels)})")
            elif op == "=" and "$" not in value and not any(s.get(label) == value for s in series):
                seen = sorted({s.get(label, "") for s in series})
                out.append(f"{sel.name} never has {label}={value!r} (values: {seen})")
            elif op == "=~" and "$" not in value:
                pattern = re.compile(value)
                if not any(pattern.fullmatch(s.get(label, "")) for s in series):
                    out.append(f"{sel.name}: no {label} matches {value!r}")
    for label in sorted(parsed.grouping - known_labels):
        out.append(f"grouping label {label!r} is on none of the expression's metrics")
    return out


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every templating query."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard["panels"])
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert m, f"variable {var['name']}: unexpected query {query!r}"
        yield f"variable {var['name']}", f"group by ({m.group(2)}) ({m.group(1)})"


def alert_queries(rules: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule.get('alert') or rule.get('record')}", rule["expr"]


def declared_index() -> dict[str, list[dict[str, str]]]:
    """The exposition of leasectl's registry once a replica running every loop declared."""
    import leasectl.certs.metrics  # noqa: F401 - registers the loops' counters
    from leasectl import metrics
    from leasectl.certs.registry import build_loops
    from leasectl.certs.settings import LoopsSettings
    from leasectl.config import from_mapping

    enabled = {"loop": {"enabled": True}}
    settings = from_mapping(
        {
            "loops": {
                "digest": enabled,
                "cloud_discovery": enabled,
                "notifications": {"smtp": {"host": "smtp.example"}},
            }
        },
        environ={},
    )
    assert isinstance(settings.loops, LoopsSettings)
    metrics.declare(build_loops(settings.loops), may_lead=True)
    return exposition_index(generate_latest(metrics.REGISTRY).decode())


# -- the parser itself ---------------------------------------------------------------------


def test_parser_finds_selectors_matchers_and_grouping() -> None:
    parsed = parse_promql(
        'time() - max by (loop) (a_seconds{loop=~"$loop", x="y"})'
        ' > on (instance, loop) group_left() 3 * b{placement="leased"}[5m] offset 1m'
        " and histogram_quantile(0.99, sum by (le) (rate(c_bucket[$__rate_interval]))) > 0.5"
    )
    assert [(s.name, s.matchers) for s in parsed.selectors] == [
        ("a_seconds", [("loop", "=~", "$loop"), ("x", "=", "y")]),
        ("b", [("placement", "=", "leased")]),
        ("c_bucket", []),
    ]
    assert parsed.grouping == {"loop", "instance", "le"}


def test_problems_names_what_is_missing() -> None:
    index = exposition_index(
        "# TYPE m counter\n"
        'm_total{loop="a",outcome="ok"} 0\n'
        "# TYPE h histogram\n"
        'h_bucket{le="1"} 0\nh_bucket{le="+Inf"} 0\nh_count 0\nh_sum 0\n'
    )
    assert problems('sum by (loop, instance) (rate(m_total{outcome="ok"}[5m]))', index) == []
    assert problems("histogram_quantile(0.9, sum by (le) (rate(h_bucket[5m])))", index) == []
    assert problems('m_total{outcome="failed"}', index) == [
        "m_total never has outcome='failed' (values: ['ok'])"
    ]
    assert problems("sum by (lease) (m_total)", index) == [
        "grouping label 'lease' is on none of the expression's metrics"
    ]
    assert problems("nope_total", index) == ["metric nope_total is not exported"]


# -- the dashboard -------------------------------------------------------------------------


def test_dashboard_is_valid_json_with_unique_ids_and_layout() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_has_a_lease_holder_timeline_and_the_liveness_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    by_kind: dict[str, list[str]] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            by_kind.setdefault(panel["type"], []).append(target["expr"])
    timelines = " ".join(by_kind["state-timeline"])
    assert "leasectl_lease_held" in timelines and "leasectl_loop_wedged" in timelines
    everything = " ".join(e for exprs in by_kind.values() for e in exprs)
    for name in (
        "leasectl_loop_ticks_total",
        "leasectl_heartbeat_seconds_bucket",
        "leasectl_self_fence_total",
        "leasectl_lease_transitions_total",
        "leasectl_loop_last_success_timestamp_seconds",
    ):
        assert name in everything, name


def test_every_dashboard_query_reads_exported_metrics_and_labels() -> None:
    index = declared_index()
    dashboard = json.loads(DASHBOARD.read_text())
    found = {
        where: problems(expr, index, allow=AFTER_FIRST_ACQUISITION)
        for where, expr in dashboard_queries(dashboard)
    }
    assert len(found) > 10
    assert {where: p for where, p in found.items() if p} == {}


def test_every_alert_reads_exported_metrics_and_labels() -> None:
    index = declared_index()
    rules = yaml.safe_load(ALERTS.read_text())
    found = {where: problems(expr, index) for where, expr in alert_queries(rules)}
    assert len(found) >= 5
    assert {where: p for where, p in found.items() if p} == {}


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    headings = {
        "#" + line.lstrip("#").strip().lower()
        for line in (REPO / "docs/operator/metrics.md").read_text().splitlines()
        if line.startswith("#")
    }
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule["alert"]
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
            notes = rule["annotations"]
            assert notes["summary"] and notes["description"], name
            doc, _, anchor = notes["runbook"].partition("#")
            assert doc == "docs/operator/metrics.md", name
            assert "#" + anchor in headings, f"{name}: no heading for #{anchor} in {doc}"
