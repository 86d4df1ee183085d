"""The status page (``/`` of every replica) from a running 3-replica cluster.

The page is read over HTTP (what it serves, its headers, that it hides the password) and in a
real browser: Debian's headless Chromium (installed by ``.ci/run``) renders it, the test reads
the rendered DOM with ``--dump-dom`` and saves a screenshot under the test's tmp dir. Waits
are conditions with deadlines; the page refreshes itself, the test simply loads it again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Cluster, kill_group, settled
from tests.conftest import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not installed (Debian package `chromium`; .ci/run installs it)",
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def fetch(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback test URL
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


class Rows(HTMLParser):
    """The ``data-*`` attributes of every element with an id (``lease-*``, ``loop-*``)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.by_id[a["id"]] = a


def rows(html: str) -> dict[str, dict[str, str]]:
    parser = Rows()
    parser.feed(html)
    return parser.by_id


def browser(tmp: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run with a fresh profile."""
    assert CHROMIUM is not None
    profile = tmp / f"chromium-{len(list(tmp.glob('chromium-*')))}"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dump_dom(tmp: Path, url: str) -> str:
    res = browser(tmp, "--dump-dom", url)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_page_serves_the_whole_cluster_without_secrets(
    make_cluster: Callable[[int], Cluster],
) -> None:
    cluster = make_cluster(3)
    held = settled(cluster)
    r1 = cluster.replicas["r1"]
    # The DSN has no password in the test cluster: give the page one to hide, via the JSON.
    code, headers, body = fetch(r1.metrics_url("/"))
    assert code == 200, body
    assert headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "<script" not in body and "http://" not in body.split("</head>")[0]
    found = rows(body)
    for lease, (holder, epoch) in held.items():
        assert found[f"lease-{lease}"]["data-holder"] == holder
        assert found[f"lease-{lease}"]["data-epoch"] == str(epoch)
    assert {"loop-alpha", "loop-beta", "loop-everywhere"} <= set(found)
    for rid in ("r1", "r2", "r3"):  # any replica's page shows every replica
        assert f">{rid}" in body
    code, _, text = fetch(r1.metrics_url("/status.json"))
    data: dict[str, Any] = json.loads(text)
    assert code == 200 and data["replica"]["replica"] == "r1"
    assert {lo["loop"] for lo in data["loops"]} >= {"alpha", "beta", "everywhere"}
    assert "password" not in text.lower()


def test_page_redacts_secrets() -> None:
    from leasectl.status_page import redact

    assert redact("connect failed: password=hunter2 host=db") == (
        "connect failed: password=*** host=db"
    )
    assert redact("postgresql://app:hunter2@db/x") == "postgresql://app:***@db/x"
    assert len(redact("x" * 500)) == 200


@needs_chromium
def test_browser_sees_holder_change_and_pause_reason(
    make_cluster: Callable[[int], Cluster], tmp_path: Path
) -> None:
    cluster = make_cluster(3)
    held = settled(cluster)
    res = cluster.cli("loop", "pause", "alpha", "--reason", "mailer incident")
    assert res.returncode == 0, res.stderr

    victim, epoch = held["beta"]
    survivor = next(r for r in cluster.replicas.values() if r.id != victim)
    url = survivor.metrics_url("/")

    dom = rows(dump_dom(tmp_path, url))
    assert dom["lease-beta"]["data-holder"] == victim, dom["lease-beta"]
    assert int(dom["lease-beta"]["data-epoch"]) == epoch
    assert dom["loop-alpha"].get("data-paused") == "mailer incident"

    kill_group(cluster.replicas[victim].proc)

    def moved() -> dict[str, str] | None:
        row = rows(dump_dom(tmp_path, url)).get("lease-beta", {})
        ok = row.get("data-holder") not in ("", victim) and int(row["data-epoch"]) > epoch
        return row if ok else None

    after = wait_until(moved, timeout=60, interval=0.5, what="beta's new holder on the page")
    assert after["data-holder"] in {"r1", "r2", "r3"} - {victim}

    shot = tmp_path / "status-page.png"
    res = browser(tmp_path, f"--screenshot={shot}", "--window-size=1280,1000", url)
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    phone = tmp_path / "status-page-phone.png"
    res = browser(tmp_path, f"--screenshot={phone}", "--window-size=390,844", url)
    assert res.returncode == 0 and phone.stat().st_size > 0
