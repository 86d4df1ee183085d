"""agent_health, short_lived_expiry, acme_gc and session_gc against the real database."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from leasectl.certs import acme_gc, agent_health, session_gc, short_lived_expiry
from leasectl.certs.settings import AgentHealthSettings, LoopsSettings
from tests.integration.everywhere_helpers import (
    add_certificate,
    make_ctx,
    pool,
    run_concurrently,
    scalar,
)

__all__ = ["pool"]


def test_agent_health_marks_only_stale_online_agents(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    conn.execute(
        "INSERT INTO leasectl_certs.agents (id, name, status, last_heartbeat_at, registered_at, "
        "retired_at)"
        " VALUES"
        " ('stale', 'stale', 'Online', now() - interval '6 minutes', now(), NULL),"
        " ('fresh', 'fresh', 'Online', now() - interval '1 minute', now(), NULL),"
        " ('silent', 'silent', 'Online', NULL, now() - interval '1 hour', NULL),"
        " ('new', 'new', 'Online', NULL, now(), NULL),"
        " ('retired', 'retired', 'Online', now() - interval '1 day', now(), now()),"
        " ('degraded', 'degraded', 'Degraded', now() - interval '1 day', now(), NULL)"
    )
    cfg = LoopsSettings(agents=AgentHealthSettings(offline_after=300.0))
    ctxs = [make_ctx(pool, cfg, replica=f"r{i}") for i in range(2)]
    run_concurrently(*(lambda c=c: agent_health.run(c) for c in ctxs))

    status = dict(conn.execute("SELECT id, status FROM leasectl_certs.agents").fetchall())
    assert status == {
        "stale": "Offline",
        "fresh": "Online",
        "silent": "Offline",
        "new": "Online",
        "retired": "Online",
        "degraded": "Degraded",
    }
    assert sum(c.stats["marked_offline"] for c in ctxs) == 2  # each agent marked once


def test_agent_health_does_not_overwrite_a_concurrent_heartbeat(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    conn.execute(
        "INSERT INTO leasectl_certs.agents (id, name, status, last_heartbeat_at)"
        " VALUES ('a1', 'a1', 'Online', now() - interval '1 hour')"
    )
    with psycopg.connect(conn.info.dsn) as agent:
        agent.execute("UPDATE leasectl_certs.agents SET last_heartbeat_at = now() WHERE id = 'a1'")
        ctx = make_ctx(pool)
        t = threading.Thread(target=agent_health.run, args=(ctx,))
        t.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not scalar(
            conn, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ):
            time.sleep(0.02)
        agent.commit()
        t.join(10)
    assert scalar(conn, "SELECT status FROM leasectl_certs.agents WHERE id = 'a1'") == "Online"
    assert ctx.stats["marked_offline"] == 0


def test_short_lived_expiry_expires_once_with_audit(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    conn.execute(
        "INSERT INTO leasectl_certs.certificate_profiles (id, name, allow_short_lived, "
        "max_ttl_seconds) VALUES"
        " ('short', 'short', true, 600), ('hour', 'hour', true, 3600),"
        " ('off', 'off', false, 600)"
    )
    for cert_id, profile, status, expires_in in [
        ("gone", "short", "Active", -60),
        ("gone2", "short", "Expiring", -1),
        ("live", "short", "Active", 300),
        ("long", "hour", "Active", -60),
        ("notshort", "off", "Active", -60),
        ("renewing", "short", "RenewalInProgress", -60),
        ("plain", None, "Active", -60),
    ]:
        add_certificate(
            conn,
            cert_id,
            issuer_id=None,
            status=status,
            profile_id=profile,
            expires_in=dt.timedelta(seconds=expires_in),
        )
    ctxs = [make_ctx(pool, replica=f"r{i}") for i in range(2)]
    run_concurrently(*(lambda c=c: short_lived_expiry.run(c) for c in ctxs))

    expired = {
        r[0]
        for r in conn.execute(
            "SELECT id FROM leasectl_certs.managed_certificates WHERE status = 'Expired'"
        )
    }
    assert expired == {"gone", "gone2"}
    audits = conn.execute(
        "SELECT resource_id FROM leasectl_certs.audit_events WHERE action = "
        "'short_lived_cert_expired' ORDER BY 1"
    ).fetchall()
    assert audits == [("gone",), ("gone2",)]


def test_acme_gc(conn: psycopg.Connection[Any], pool: ConnectionPool) -> None:
    conn.execute(
        "INSERT INTO leasectl_certs.acme_nonces (nonce, expires_at, used) VALUES"
        " ('used', now() + interval '1 hour', true), ('old', now() - interval '1 s', false),"
        " ('good', now() + interval '1 hour', false)"
    )
    conn.execute(
        "INSERT INTO leasectl_certs.acme_orders (order_id, account_id, status, expires_at) VALUES"
        " ('o-pending', 'a', 'pending', now() - interval '1 s'),"
        " ('o-processing', 'a', 'processing', now() - interval '1 s'),"
        " ('o-valid', 'a', 'valid', now() - interval '1 s'),"
        " ('o-future', 'a', 'ready', now() + interval '1 hour')"
    )
    conn.execute(
        "INSERT INTO leasectl_certs.acme_authorizations (authz_id, order_id, identifier, "
        "status, expires_at)"
        " VALUES ('z-old', 'o-valid', '{}', 'pending', now() - interval '1 s'),"
        " ('z-valid', 'o-valid', '{}', 'valid', now() - interval '1 s'),"
        " ('z-future', 'o-future', '{}', 'pending', now() + interval '1 hour')"
    )
    ctx = make_ctx(pool)
    acme_gc.run(ctx)

    assert [r[0] for r in conn.execute("SELECT nonce FROM leasectl_certs.acme_nonces")] == ["good"]
    orders = dict(
        conn.execute("SELECT order_id, status FROM leasectl_certs.acme_orders").fetchall()
    )
    assert orders == {
        "o-pending": "invalid",
        "o-processing": "invalid",
        "o-valid": "valid",
        "o-future": "ready",
    }
    error = scalar(
        conn, "SELECT error FROM leasectl_certs.acme_orders WHERE order_id = 'o-pending'"
    )
    assert error["type"] == "urn:ietf:params:acme:error:serverInternal"
    assert error["detail"] == "order expired before issuance"
    authz = dict(
        conn.execute("SELECT authz_id, status FROM leasectl_certs.acme_authorizations").fetchall()
    )
    assert authz == {"z-old": "expired", "z-valid": "valid", "z-future": "pending"}
    assert ctx.stats == {"delete_nonces": 2, "expire_authorizations": 1, "invalidate_orders": 2}


def test_session_gc(conn: psycopg.Connection[Any], pool: ConnectionPool) -> None:
    conn.execute(
        "INSERT INTO leasectl_certs.sessions (id, actor_id, is_pre_login, idle_expires_at,"
        " absolute_expires_at, created_at) VALUES"
        " ('expired', 'u', false, now(), now() - interval '1 s', now() - interval '1 day'),"
        " ('live', 'u', false, now(), now() + interval '1 hour', now() - interval '1 day'),"
        " ('prelogin-old', 'u', true, now(), now() + interval '1 hour',"
        "  now() - interval '11 minutes'),"
        " ('prelogin-new', 'u', true, now(), now() + interval '1 hour', now())"
    )
    session_gc.run(make_ctx(pool))
    left = sorted(r[0] for r in conn.execute("SELECT id FROM leasectl_certs.sessions"))
    assert left == ["live", "prelogin-new"]


@pytest.mark.parametrize("module", [agent_health, short_lived_expiry, acme_gc, session_gc])
def test_builds_everywhere_loops(module: Any) -> None:
    spec = module.build(LoopsSettings())
    assert spec is not None and spec.placement == "everywhere"
    assert spec.name == module.NAME
