"""Two real replica processes running all fifteen loops against one PostgreSQL.

A starts alone and takes every leased loop; when B joins, spread placement hands B its share
(no replica holds more than half, rounded up). A is then asked to step down (both replicas
alive: the case where a split brain would show), and B is SIGKILLed. Across the whole run:

- each leased loop's slot was completed by one replica only (ledger and logs agree);
- no webhook Idempotency-Key arrived from two epochs while both epochs were believed valid
  (a re-delivery by a newer epoch after the older one ended is the fence protocol working);
- every seeded notification was delivered, and everywhere loops ran on both replicas.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from aiosmtpd.controller import Controller

from tests.ca_test_keys import TEST_KEK, seeded_ca
from tests.conftest import one, wait_until
from tests.integration.leased_helpers import free_port

HMAC_KEY = "cluster-test-key"
LEASED = ("notification_send", "notification_retry", "digest", "cloud_discovery", "crl_generation")
N_NOTIFICATIONS = 30


@dataclass
class Delivery:
    key: str
    epoch: int
    replica: str
    at: float


class Hooks:
    """A real webhook receiver that verifies the HMAC and timestamps every delivery."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.bad_signatures = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                want = "sha256=" + hmac.new(HMAC_KEY.encode(), body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(want, self.headers.get("X-Leasectl-Signature", "")):
                    outer.bad_signatures += 1
                outer.deliveries.append(
                    Delivery(
                        self.headers["Idempotency-Key"],
                        int(self.headers["X-Leasectl-Epoch"]),
                        self.headers["X-Leasectl-Replica"],
                        time.time(),
                    )
                )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


class Sink:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        return "250 OK"


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    h = Hooks()
    yield h
    h.server.shutdown()
    h.server.server_close()


@pytest.fixture
def smtp_port() -> Iterator[int]:
    port = free_port()
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    yield port
    controller.stop()


def seed(conn: psycopg.Connection[Any]) -> None:
    cert_pem, key_pem, _ = seeded_ca("Cluster Test CA")
    conn.execute(
        "INSERT INTO leasectl_certs.owners (id, name, email) VALUES ('o1', 'Ops', "
        "'ops@example.test')"
    )
    conn.execute(
        "INSERT INTO leasectl_certs.issuers (id, name, type, ca_cert_pem, ca_key_pem) "
        "VALUES ('local', 'Local CA', 'local', %s, %s)",
        (cert_pem, key_pem),
    )
    for i in range(5):
        conn.execute(
            "INSERT INTO leasectl_certs.managed_certificates (id, name, common_name, owner_id, "
            "issuer_id, "
            "status, expires_at) VALUES (%s, %s, %s, 'o1', 'local', 'Active', "
            "now() + interval '5 days')",
            (f"c{i}", f"cert-{i}", f"svc{i}.example.test"),
        )
        conn.execute(
            "INSERT INTO leasectl_certs.certificate_revocations (serial_number, issuer_id) "
            "VALUES (%s, 'local')",
            (f"{1000 + i:x}",),
        )
    for i in range(N_NOTIFICATIONS):
        conn.execute(
            "INSERT INTO leasectl_certs.notification_events (id, type, channel, recipient, "
            "subject, message) "
            "VALUES (%s, 'Custom', 'Webhook', 'ops', 'drill', 'hello')",
            (f"n{i:03d}",),
        )


def write_config(path: Path, dsn: str, hooks: Hooks, smtp_port: int) -> None:
    fast = {"enabled": True, "interval": 0.5}
    cfg = {
        "database": {"dsn": dsn},
        "scheduler": {"shutdown_grace": 5},
        "metrics": {"listen": "127.0.0.1:0"},
        "logging": {"format": "json", "level": "INFO"},
        "loops": {
            "jobs": {"processor": fast, "retry": fast, "timeout": fast},
            "renewal": {"check": fast, "default_channels": ["Email", "Webhook"]},
            "agents": {"check": fast},
            "notifications": {
                "send": fast,
                "retry": fast,
                "webhook": {"url": hooks.url, "hmac_key": HMAC_KEY},
                "smtp": {"host": "127.0.0.1", "port": smtp_port, "tls": "none"},
                "allow_private_networks": ["127.0.0.0/8"],  # the receiver is local
            },
            "digest": {"loop": {"enabled": True, "interval": 1.0}, "recipients": ["a@x.test"]},
            "cloud_discovery": {
                "loop": {"enabled": True, "interval": 1.0},
                # No AWS here: the endpoint refuses connections, so the source fails
                # (recorded) every tick while the loop itself keeps its slot discipline.
                "aws": {"endpoint_url": "http://127.0.0.1:9", "max_attempts": 1},
            },
            "crl": {"loop": fast},
            "network_scan": {"loop": fast},
            "health_check": {"loop": fast},
            "gc": {"short_lived_expiry": fast, "acme": fast, "sessions": fast},
            "ca": {"kek": TEST_KEK},  # the seeded CA key is stored encrypted under it
        },
    }
    path.write_text(yaml.safe_dump(cfg))


class Proc:
    def __init__(self, name: str, config: Path, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "leasectl.cli",
                "run",
                "--config",
                str(config),
                "--replica-id",
                name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "w"),  # noqa: SIM115 - closed with the process
            env=env,
        )

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


def holders(conn: psycopg.Connection[Any]) -> dict[str, str]:
    rows = conn.execute(
        "SELECT l.name, l.holder FROM leasectl_leases l JOIN pg_locks k ON k.locktype = "
        "'advisory' AND k.granted AND k.objsubid = 2 AND k.objid = (l.key::bigint & 4294967295)"
        "::oid AND k.pid = l.holder_backend_pid"
    ).fetchall()
    return {name: holder for name, holder in rows}


def loops_ticked(conn: psycopg.Connection[Any], replica: str) -> set[str]:
    """Leased loops with at least one completed slot by ``replica``."""
    rows = conn.execute(
        "SELECT DISTINCT loop FROM leasectl_ticks WHERE replica = %s AND outcome = 'ok'",
        (replica,),
    ).fetchall()
    return {r[0] for r in rows}


@pytest.mark.slow
def test_two_replicas_all_fifteen_loops(
    dsn: str, conn: psycopg.Connection[Any], hooks: Hooks, smtp_port: int, tmp_path: Path
) -> None:
    seed(conn)
    config = tmp_path / "leasectl.yaml"
    write_config(config, dsn, hooks, smtp_port)
    a = Proc("A", config, tmp_path)
    procs = [a]
    try:
        wait_until(
            lambda: set(holders(conn)) >= set(LEASED) and set(holders(conn).values()) == {"A"},
            timeout=30,
            what="A holds every leased loop",
        )
        wait_until(
            lambda: loops_ticked(conn, "A") == set(LEASED), timeout=60, what="A ran every loop"
        )
        b = Proc("B", config, tmp_path)
        procs.append(b)
        share = -(-len(LEASED) // 2)
        wait_until(
            lambda: (
                len(held := holders(conn)) >= len(LEASED)
                and sorted(set(held.values())) == ["A", "B"]
                and max(Counter(held.values()).values()) <= share
            ),
            timeout=45,
            what="spread placement: A handed B its share of the leases",
        )
        wait_until(
            lambda: (
                one(
                    conn.execute(
                        "SELECT count(*) FROM leasectl_replicas WHERE id = 'B'"
                        " AND last_seen > now() - interval '2 s'"
                    )
                )[0]
                == 1
            ),
            what="B is up",
        )
        step = subprocess.run(
            [
                sys.executable,
                "-m",
                "leasectl.cli",
                "step-down",
                "--dsn",
                dsn,
                "--replica",
                "A",
                "--cooldown",
                "8",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert step.returncode == 0, step.stderr
        wait_until(
            lambda: set(holders(conn).values()) == {"B"} and len(holders(conn)) >= 5,
            timeout=30,
            what="B took every lease",
        )
        wait_until(
            lambda: loops_ticked(conn, "B") == set(LEASED), timeout=60, what="B ran every loop"
        )
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(10)
        # A is in cooldown for 8 s after the step-down; it takes over once that ends.
        wait_until(
            lambda: set(holders(conn).values()) == {"A"} and len(holders(conn)) >= 5,
            timeout=40,
            what="A took the leases back after B died",
        )
        wait_until(
            lambda: (
                one(
                    conn.execute(
                        "SELECT count(*) FROM leasectl_certs.notification_events"
                        " WHERE status = 'sent'"
                    )
                )[0]
                >= N_NOTIFICATIONS
            ),
            timeout=30,
            what="every seeded notification delivered",
        )
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.proc.wait(30)
            except subprocess.TimeoutExpired:
                p.proc.kill()
    assert a.proc.returncode == 0, a.log_path.read_text()[-3000:]

    # 1. one replica per slot: the ledger (unique by constraint) and the logs agree.
    done: dict[tuple[str, str], set[str]] = {}
    for p in procs:
        for e in p.events():
            if e.get("action") == "tick_finished" and e.get("outcome") == "ok" and e.get("lease"):
                done.setdefault((e["loop"], e["tick_at"]), set()).add(p.name)
    assert done, "no leased tick finished"
    assert {k: v for k, v in done.items() if len(v) > 1} == {}
    per_loop = {loop for loop, _ in done}
    assert per_loop == set(LEASED)
    replicas_per_loop = conn.execute(
        "SELECT loop, count(DISTINCT replica) FROM leasectl_ticks WHERE outcome = 'ok' "
        "GROUP BY loop"
    ).fetchall()
    assert {loop for loop, n in replicas_per_loop if n == 2} == set(LEASED)

    # 2. no Idempotency-Key from two epochs while both were believed valid.
    acquired: dict[int, float] = {}
    for p in procs:
        for e in p.events():
            if e.get("action") == "lease_acquired" and e.get("lease") == "notification_send":
                acquired[int(e["epoch"])] = float(e["ts"])
    by_key: dict[str, list[Delivery]] = {}
    for d in hooks.deliveries:
        by_key.setdefault(d.key, []).append(d)
    assert hooks.bad_signatures == 0
    for key, ds in by_key.items():
        epochs = sorted({d.epoch for d in ds})
        for older, newer in zip(epochs, epochs[1:], strict=False):
            last_old = max(d.at for d in ds if d.epoch == older)
            assert last_old <= acquired.get(newer, float("inf")), (
                f"{key} delivered by epoch {older} after epoch {newer} was acquired"
            )
    assert {f"n{i:03d}" for i in range(N_NOTIFICATIONS)} <= set(by_key)

    # 3. everywhere loops ran on both replicas; both registered all fifteen loops (and the
    # built-in ledger_retention loop every replica runs).
    loops = conn.execute("SELECT id, loops FROM leasectl_replicas").fetchall()
    assert {rid: len(names) for rid, names in loops} == {"A": 16, "B": 16}
    assert all("ledger_retention" in names for _, names in loops)
    issued = conn.execute(
        "SELECT count(*) FROM leasectl_certs.jobs WHERE status = 'Completed'"
    ).fetchone()
    assert issued is not None and issued[0] >= 5  # renewal jobs created and processed
    crl = conn.execute(
        "SELECT array_agg(crl_number ORDER BY started_at) FROM "
        "leasectl_certs.crl_generation_events "
        "WHERE succeeded"
    ).fetchone()
    assert crl is not None and crl[0] == sorted(crl[0]) and len(set(crl[0])) == len(crl[0])
