"""network_scan and health_check against a real TLS server on 127.0.0.1 and the real database."""

from __future__ import annotations

import socket
import threading
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from leasectl.certs import health_check, network_scan
from leasectl.errors import TickCancelled
from leasectl.loop import TickContext
from tests.integration.everywhere_helpers import (
    closed_port,
    make_ctx,
    pool,
    run_concurrently,
    scalar,
    tls_server,
)
from tests.integration.leased_helpers import one_connection_pool, terminate_backends

__all__ = ["pool"]


def add_target(
    conn: psycopg.Connection[Any],
    target_id: str,
    cidrs: list[str],
    ports: list[int],
    **extra: Any,
) -> None:
    conn.execute(
        "INSERT INTO leasectl_certs.network_scan_targets (id, name, cidrs, ports, timeout_ms) "
        "VALUES (%s, %s, %s, %s, 2000)",
        (target_id, target_id, cidrs, ports),
    )
    for column, value in extra.items():
        conn.execute(
            # test-only: the column names come from this file
            f"UPDATE leasectl_certs.network_scan_targets SET {column} = %s WHERE id = %s",
            (value, target_id),
        )


def test_network_scan_finds_the_served_certificate_once(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    with tls_server("scan.example.test") as server:
        add_target(conn, "lo", ["127.0.0.1/32"], [server.port, closed_port()])
        add_target(conn, "off", ["127.0.0.1/32"], [server.port], enabled=False)
        add_target(
            conn, "held", ["127.0.0.1/32"], [server.port],
            scan_claimed_by="other", scan_claimed_until="infinity",
        )  # fmt: skip
        ctxs = [make_ctx(pool, loop="network_scan", replica=f"r{i}") for i in range(2)]

        run_concurrently(*(lambda c=c: network_scan.run(c) for c in ctxs))

        assert sum(c.stats.get("targets_scanned", 0) for c in ctxs) == 1
        rows = conn.execute(
            "SELECT fingerprint_sha256, common_name, source_path, agent_id, status, sans,"
            " is_ca, key_algorithm FROM leasectl_certs.discovered_certificates"
        ).fetchall()
        assert rows == [
            (
                server.fingerprint,
                "scan.example.test",
                f"127.0.0.1:{server.port}",
                "server-scanner",
                "Unmanaged",
                ["scan.example.test", "127.0.0.1"],
                False,
                "ECDSA",
            )
        ]
        scans = conn.execute(
            "SELECT agent_id, certificates_found, certificates_new, directories"
            " FROM leasectl_certs.discovery_scans"
        ).fetchall()
        assert scans == [("server-scanner", 1, 1, ["127.0.0.1/32"])]
        target = conn.execute(
            "SELECT last_scan_at IS NOT NULL, last_scan_certs_found, scan_claimed_by"
            " FROM leasectl_certs.network_scan_targets WHERE id = 'lo'"
        ).fetchone()
        assert target == (True, 1, None)
        assert (
            scalar(
                conn, "SELECT last_scan_at FROM leasectl_certs.network_scan_targets WHERE id='off'"
            )
            is None
        )
        assert (
            scalar(
                conn, "SELECT last_scan_at FROM leasectl_certs.network_scan_targets WHERE id='held'"
            )
            is None
        )
        assert (
            scalar(conn, "SELECT status FROM leasectl_certs.agents WHERE id = 'server-scanner'")
            == "Online"
        )

        # Not due again until scan_interval_hours (6) have passed.
        network_scan.run(make_ctx(pool))
        assert scalar(conn, "SELECT count(*) FROM leasectl_certs.discovery_scans") == 1
        conn.execute(
            "UPDATE leasectl_certs.network_scan_targets SET last_scan_at = now() - interval '7 "
            "hours'"
            " WHERE id = 'lo'"
        )
        network_scan.run(make_ctx(pool))
        assert scalar(conn, "SELECT count(*) FROM leasectl_certs.discovery_scans") == 2
        assert (
            scalar(conn, "SELECT count(*) FROM leasectl_certs.discovered_certificates") == 1
        )  # upserted
        latest = conn.execute(
            "SELECT certificates_found, certificates_new FROM leasectl_certs.discovery_scans "
            "ORDER BY id DESC"
        ).fetchone()
        assert latest == (1, 0)
        assert scalar(
            conn,
            "SELECT discovery_scan_id = (SELECT max(id) FROM leasectl_certs.discovery_scans)"
            " FROM leasectl_certs.discovered_certificates",
        )


def test_expand_bounds_and_filters() -> None:
    pairs, errors = network_scan.expand(["10.0.0.0/30", "224.0.0.1", "bogus"], [443, 0], 4096)
    assert pairs == [("10.0.0.1", 443), ("10.0.0.2", 443)]  # network and broadcast dropped
    assert any("invalid CIDR 'bogus'" in e for e in errors)
    assert any("port 0" in e for e in errors)
    pairs, errors = network_scan.expand(["10.0.0.0/20"], [443], 4096)
    assert len(pairs) == 4094 and not errors
    pairs, errors = network_scan.expand(["10.0.0.0/19"], [443], 4096)
    assert pairs == [] and "8192 addresses" in errors[0]


def add_check(
    conn: psycopg.Connection[Any],
    check_id: str,
    endpoint: str,
    *,
    expected: str | None = None,
    status: str = "unknown",
    failures: int = 0,
    degraded: int = 2,
    down: int = 3,
) -> None:
    conn.execute(
        "INSERT INTO leasectl_certs.endpoint_health_checks (id, endpoint, expected_fingerprint, "
        "status,"
        " consecutive_failures, degraded_threshold, down_threshold, check_interval_seconds)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, 300)",
        (check_id, endpoint, expected, status, failures, degraded, down),
    )


def checks(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, int]]:
    rows = conn.execute(
        "SELECT id, status, consecutive_failures FROM leasectl_certs.endpoint_health_checks"
    )
    return {r[0]: (r[1], r[2]) for r in rows}


def make_due(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "UPDATE leasectl_certs.endpoint_health_checks SET last_checked_at = now() - "
        "interval '1 hour'"
    )


def test_health_check_state_machine(conn: psycopg.Connection[Any], pool: ConnectionPool) -> None:
    with tls_server("health.example.test") as server:
        fp = server.fingerprint
        colon_upper = ":".join(fp[i : i + 2] for i in range(0, len(fp), 2)).upper()
        add_check(conn, "good", server.endpoint)
        add_check(conn, "pinned", server.endpoint, expected=colon_upper)
        add_check(conn, "mismatch", server.endpoint, expected="ab" * 32)
        add_check(conn, "recovering", server.endpoint, status="degraded", failures=4, down=9)
        add_check(conn, "closed", f"127.0.0.1:{closed_port()}")
        ctxs = [make_ctx(pool, loop="health_check", replica=f"r{i}") for i in range(2)]

        run_concurrently(*(lambda c=c: health_check.run(c) for c in ctxs))

        assert checks(conn) == {
            "good": ("healthy", 0),
            "pinned": ("healthy", 0),
            "mismatch": ("cert_mismatch", 0),
            "recovering": ("healthy", 0),
            "closed": ("healthy", 1),  # one failure, counted once, below degraded (2)
        }
        assert sum(c.stats.get("ok", 0) + c.stats.get("failed", 0) for c in ctxs) == 5
        observed = scalar(
            conn,
            "SELECT observed_fingerprint FROM leasectl_certs.endpoint_health_checks WHERE "
            "id = 'good'",
        )
        assert observed == fp
        row = conn.execute(
            "SELECT tls_version, cert_subject, cert_expiry IS NOT NULL, response_time_ms >= 0"
            " FROM leasectl_certs.endpoint_health_checks WHERE id = 'good'"
        ).fetchone()
        assert row == ("TLSv1.3", "CN=health.example.test", True, True)
        reason = scalar(
            conn,
            "SELECT failure_reason FROM leasectl_certs.endpoint_health_checks WHERE id = 'closed'",
        )
        assert "ConnectionRefusedError" in reason

        # not due: nothing is probed again
        health_check.run(make_ctx(pool))
        assert scalar(conn, "SELECT count(*) FROM leasectl_certs.endpoint_health_history") == 5

        make_due(conn)
        health_check.run(make_ctx(pool))
        assert checks(conn)["closed"] == ("degraded", 2)
        make_due(conn)
        health_check.run(make_ctx(pool))
        assert checks(conn)["closed"] == ("down", 3)
        assert checks(conn)["good"] == ("healthy", 0)

    history = conn.execute(
        "SELECT status FROM leasectl_certs.endpoint_health_history WHERE health_check_id = "
        "'closed' ORDER BY id"
    ).fetchall()
    assert [h[0] for h in history] == ["healthy", "degraded", "down"]
    transitions = conn.execute(
        "SELECT resource_id, details->>'from', details->>'to' FROM leasectl_certs.audit_events"
        " WHERE action = 'health_check_status_transition' ORDER BY id"
    ).fetchall()
    assert sorted(transitions) == sorted(
        [
            ("good", "unknown", "healthy"),
            ("pinned", "unknown", "healthy"),
            ("mismatch", "unknown", "cert_mismatch"),
            ("recovering", "degraded", "healthy"),
            ("closed", "unknown", "healthy"),
            ("closed", "healthy", "degraded"),
            ("closed", "degraded", "down"),
        ]
    )
    acknowledged = scalar(
        conn, "SELECT acknowledged FROM leasectl_certs.endpoint_health_checks WHERE id = 'closed'"
    )
    assert acknowledged is False


def test_health_history_retention(conn: psycopg.Connection[Any], pool: ConnectionPool) -> None:
    add_check(conn, "c", "127.0.0.1:1")
    conn.execute(
        "UPDATE leasectl_certs.endpoint_health_checks SET last_checked_at = now(), enabled = false"
    )
    conn.execute(
        "INSERT INTO leasectl_certs.endpoint_health_history (health_check_id, status, "
        "checked_at) VALUES"
        " ('c', 'healthy', now() - interval '31 days'),"
        " ('c', 'healthy', now() - interval '29 days')"
    )
    ctx = make_ctx(pool)
    health_check.run(ctx)
    assert scalar(conn, "SELECT count(*) FROM leasectl_certs.endpoint_health_history") == 1
    assert ctx.stats["history_pruned"] == 1


def test_a_stopped_scan_releases_its_claim(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    # A listener that accepts and never answers the handshake: the probe hangs until timeout.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        add_target(conn, "slow", ["127.0.0.1/32"], [silent.getsockname()[1]], timeout_ms=1500)
        ctx = make_ctx(pool, loop="network_scan")
        errors: list[BaseException] = []

        def scan() -> None:
            try:
                network_scan.run(ctx)
            except BaseException as exc:  # noqa: BLE001 - inspected below
                errors.append(exc)

        t = threading.Thread(target=scan)
        t.start()
        claimed = (
            "SELECT scan_claimed_by FROM leasectl_certs.network_scan_targets WHERE id = 'slow'"
        )
        for _ in range(250):
            if scalar(conn, claimed):
                break
            threading.Event().wait(0.02)
        assert scalar(conn, claimed) == "replica-a"
        ctx.stop.set()
        t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], TickCancelled)
    row = conn.execute(
        "SELECT scan_claimed_by, scan_claimed_until, last_scan_at FROM "
        "leasectl_certs.network_scan_targets"
    ).fetchone()
    assert row == (None, None, None)  # released, and no scan recorded: due again next tick
    assert scalar(conn, "SELECT count(*) FROM leasectl_certs.discovery_scans") == 0


def test_a_target_a_dead_tick_left_claimed_is_scanned_by_the_next_tick(
    dsn: str, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work connection is terminated right after the claim, and the tick is stopped then:
    its hand-back runs on the dead connection, so the target stays claimed by this replica
    (for claim_ttl, 30 min, to everyone else). The replica's next tick scans it at once."""
    app_name = "i23-scan-work"
    fired: list[int] = []
    scan = network_scan.scan_target

    def kill_then_scan(ctx: TickContext, target: dict[str, Any], settings: Any) -> None:
        if not fired:
            fired.append(terminate_backends(conn, app_name))
            ctx.stop.set()  # a shutdown at that instant: the probes stop, the hand-back fails
        scan(ctx, target, settings)

    monkeypatch.setattr(network_scan, "scan_target", kill_then_scan)
    with tls_server("orphan.example.test") as server, one_connection_pool(dsn, app_name) as work:
        add_target(conn, "t", ["127.0.0.1/32"], [server.port])
        with pytest.raises(psycopg.OperationalError):
            network_scan.run(make_ctx(work, loop="network_scan"))
        assert fired == [1]
        held = "SELECT scan_claimed_by, scan_claimed_until > now() + interval '20 minutes'"
        assert conn.execute(held + " FROM leasectl_certs.network_scan_targets").fetchone() == (
            "replica-a",
            True,
        )
        # Another replica leaves it alone (the claim is live for it) ...
        other = make_ctx(work, loop="network_scan", replica="replica-b")
        network_scan.run(other)
        assert other.stats == {}
        # ... this replica's next tick scans it.
        ctx = make_ctx(work, loop="network_scan")
        network_scan.run(ctx)
    assert ctx.stats["targets_scanned"] == 1 and ctx.stats["certificates_found"] == 1
    row = conn.execute(
        "SELECT scan_claimed_by, last_scan_at IS NOT NULL FROM leasectl_certs.network_scan_targets"
    ).fetchone()
    assert row == (None, True)
