"""job_processor, job_retry and job_timeout against the real database."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from typing import Any

import psycopg
import pytest
from cryptography import x509
from psycopg_pool import ConnectionPool

from loops import job_processor, job_retry, job_timeout
from loops.settings import JobsSettings, LoopsSettings
from tests.integration.everywhere_helpers import (
    add_certificate,
    add_issuer,
    add_job,
    job_row,
    make_ctx,
    pool,
    run_concurrently,
    scalar,
)

__all__ = ["pool"]  # the fixture


def settings(**jobs: Any) -> LoopsSettings:
    return LoopsSettings(jobs=dataclasses.replace(JobsSettings(), **jobs))


def test_two_replicas_process_every_job_exactly_once(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    issuer = add_issuer(conn)
    n = 40
    for i in range(n):
        add_certificate(
            conn, f"c{i}", status="Pending", expires_in=None, sans=[f"alt{i}.example.test"]
        )
        add_job(conn, f"j{i}", "Issuance" if i % 2 else "Renewal", certificate_id=f"c{i}")
    cfg = settings(claim_batch=5, concurrency=3)
    ctx_a = make_ctx(pool, cfg, loop="job_processor", replica="replica-a")
    ctx_b = make_ctx(pool, cfg, loop="job_processor", replica="replica-b")

    run_concurrently(lambda: job_processor.run(ctx_a), lambda: job_processor.run(ctx_b))

    assert ctx_a.stats.get("claimed", 0) + ctx_b.stats.get("claimed", 0) == n
    assert ctx_a.stats.get("completed", 0) + ctx_b.stats.get("completed", 0) == n
    rows = conn.execute("SELECT status, attempts, claimed_by, started_at FROM jobs").fetchall()
    assert {r[0] for r in rows} == {"Completed"}
    assert {r[1] for r in rows} == {1}  # claimed once each: never processed twice
    assert all(r[3] is not None for r in rows)
    assert scalar(conn, "SELECT count(DISTINCT job_id) FROM certificate_versions") == n
    assert scalar(conn, "SELECT count(*) FROM certificate_versions") == n
    assert scalar(conn, "SELECT count(*) FROM audit_events WHERE action='job_completed'") == n

    versions = conn.execute(
        "SELECT v.certificate_id, v.pem_chain, v.serial_number, v.fingerprint_sha256, "
        "v.not_after, c.expires_at, c.status, c.last_renewal_at, c.common_name "
        "FROM certificate_versions v JOIN managed_certificates c ON c.id = v.certificate_id"
    ).fetchall()
    for cert_id, chain, serial, fp, not_after, expires_at, status, renewed, cn in versions:
        leaf = x509.load_pem_x509_certificates(chain.encode())[0]
        leaf.verify_directly_issued_by(issuer.cert)
        assert format(leaf.serial_number, "x") == serial
        assert leaf.fingerprint(leaf.signature_hash_algorithm).hex() == fp  # type: ignore[arg-type]
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [cn, f"alt{cert_id[1:]}.example.test"]
        assert status == "Active" and renewed is not None
        assert expires_at == not_after == leaf.not_valid_after_utc
        assert dt.timedelta(days=89) < not_after - dt.datetime.now(dt.UTC) <= dt.timedelta(days=90)


def test_issuer_without_ca_gets_exactly_one(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    conn.execute("INSERT INTO issuers (id, name) VALUES ('fresh', 'Fresh')")
    for i in range(6):
        add_certificate(conn, f"c{i}", issuer_id="fresh", status="Pending", expires_in=None)
        add_job(conn, f"j{i}", certificate_id=f"c{i}")
    cfg = settings(claim_batch=1, concurrency=1)
    ctx_a, ctx_b = make_ctx(pool, cfg, replica="a"), make_ctx(pool, cfg, replica="b")

    run_concurrently(lambda: job_processor.run(ctx_a), lambda: job_processor.run(ctx_b))

    ca_pem = scalar(conn, "SELECT ca_cert_pem FROM issuers WHERE id='fresh'")
    ca_cert = x509.load_pem_x509_certificate(ca_pem.encode())
    chains = [r[0] for r in conn.execute("SELECT pem_chain FROM certificate_versions")]
    assert len(chains) == 6
    for chain in chains:  # every leaf chains to the one stored CA, whoever created it
        x509.load_pem_x509_certificates(chain.encode())[0].verify_directly_issued_by(ca_cert)


def test_validation_and_unroutable_jobs_fail_and_agent_jobs_are_not_claimed(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    add_issuer(conn)
    add_certificate(conn, "c1")
    conn.execute("INSERT INTO agents (id, name) VALUES ('ag1', 'ag1')")
    conn.execute("INSERT INTO issuers (id, name, type) VALUES ('acme1', 'acme', 'acme')")
    add_certificate(conn, "c2", issuer_id="acme1")
    add_job(conn, "val", "Validation", certificate_id="c1")
    add_job(conn, "dep-server", "Deployment", certificate_id="c1")
    add_job(conn, "dep-agent", "Deployment", certificate_id="c1", agent_id="ag1")
    add_job(conn, "acme", "Renewal", certificate_id="c2")
    add_job(
        conn,
        "later",
        "Renewal",
        certificate_id="c1",
        scheduled_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    ctx = make_ctx(pool)

    job_processor.run(ctx)

    val, dep, agent, acme, later = (
        job_row(conn, j) for j in ("val", "dep-server", "dep-agent", "acme", "later")
    )
    assert val["status"] == "Failed" and "Validation jobs are not supported" in val["last_error"]
    assert dep["status"] == "Failed" and "no agent_id" in dep["last_error"]
    assert acme["status"] == "Failed" and "type 'acme'" in acme["last_error"]
    assert agent["status"] == "Pending" and agent["attempts"] == 0  # the agent's to claim
    assert later["status"] == "Pending" and later["attempts"] == 0  # not due yet
    assert ctx.stats == {"claimed": 3, "failed": 3}
    assert scalar(conn, "SELECT count(*) FROM audit_events WHERE action='job_failed'") == 3


def test_a_reaped_claim_cannot_complete_or_store(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    add_issuer(conn)
    add_certificate(conn, "c1", status="Pending", expires_in=None)
    add_job(conn, "j1", certificate_id="c1")
    ctx_a = make_ctx(pool, replica="replica-a")
    claimed = job_processor.claim(ctx_a, 10)
    assert [j["id"] for j in claimed] == ["j1"]
    # replica-a stalls; job_timeout fails the job and job_retry + replica-b redo it.
    conn.execute("UPDATE jobs SET started_at = now() - interval '2 hours' WHERE id='j1'")
    job_timeout.run(make_ctx(pool, loop="job_timeout"))
    assert job_row(conn, "j1")["status"] == "Failed"
    job_retry.run(make_ctx(pool, settings(retry_backoff_base=0.0), loop="job_retry"))
    assert job_row(conn, "j1")["status"] == "Pending"
    ctx_b = make_ctx(pool, replica="replica-b")
    job_processor.run(ctx_b)

    job_processor.process(ctx_a, claimed, LoopsSettings())  # the stale claim wakes up

    assert ctx_a.stats["lost"] == 1 and ctx_b.stats["completed"] == 1
    row = job_row(conn, "j1")
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("Completed", 2, "replica-b")
    assert scalar(conn, "SELECT count(*) FROM certificate_versions") == 1


def test_a_stopped_tick_releases_unstarted_jobs(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    add_issuer(conn)
    for i in range(3):
        add_certificate(conn, f"c{i}", status="Pending", expires_in=None)
        add_job(conn, f"j{i}", certificate_id=f"c{i}")
    ctx = make_ctx(pool)
    claimed = job_processor.claim(ctx, 10)
    ctx.stop.set()

    job_processor.process(ctx, claimed, LoopsSettings())

    assert ctx.stats["released"] == 3
    rows = conn.execute("SELECT status, attempts, claimed_by FROM jobs").fetchall()
    assert rows == [("Pending", 0, None)] * 3


def test_retry_backoff_and_max_attempts(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    add_issuer(conn)
    for i in range(4):
        add_certificate(conn, f"c{i}", status="RenewalInProgress")
    add_job(conn, "first", "Renewal", certificate_id="c0", status="Failed", attempts=1)
    add_job(conn, "second", "Renewal", certificate_id="c1", status="Failed", attempts=2)
    add_job(
        conn, "capped", "Renewal", certificate_id="c2", status="Failed", attempts=9, max_attempts=20
    )
    add_job(conn, "done", "Renewal", certificate_id="c3", status="Failed", attempts=3)
    cfg = settings(retry_backoff_base=60.0, retry_backoff_max=600.0)
    ctx_a = make_ctx(pool, cfg, replica="a", loop="job_retry")
    ctx_b = make_ctx(pool, cfg, replica="b", loop="job_retry")

    run_concurrently(lambda: job_retry.run(ctx_a), lambda: job_retry.run(ctx_b))

    now = scalar(conn, "SELECT now()")
    delays = {
        j: (job_row(conn, j)["scheduled_at"] - now).total_seconds()
        for j in ("first", "second", "capped")
    }
    assert 55 < delays["first"] <= 61  # base * 2^0
    assert 115 < delays["second"] <= 121  # base * 2^1
    assert 595 < delays["capped"] <= 601  # capped
    assert {job_row(conn, j)["status"] for j in delays} == {"Pending"}
    done = job_row(conn, "done")
    assert done["status"] == "Failed" and done["attempts"] == 3  # no attempts left
    statuses = dict(conn.execute("SELECT id, status FROM managed_certificates").fetchall())
    assert statuses == {
        "c0": "RenewalInProgress",
        "c1": "RenewalInProgress",
        "c2": "RenewalInProgress",
        "c3": "Failed",
    }
    # two replicas at once: each retry (and each exhausted certificate) audited once
    assert scalar(conn, "SELECT count(*) FROM audit_events WHERE action='job_retry'") == 3
    assert (
        scalar(
            conn, "SELECT count(*) FROM audit_events WHERE action='certificate_renewal_exhausted'"
        )
        == 1
    )
    # scheduled in the future: the processor does not take them yet
    job_processor.run(make_ctx(pool, cfg))
    assert {job_row(conn, j)["attempts"] for j in ("first", "second")} == {1, 2}


def test_failing_job_stops_at_max_attempts(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    conn.execute("INSERT INTO issuers (id, name, type) VALUES ('ext', 'ext', 'external')")
    add_certificate(conn, "c1", issuer_id="ext", status="RenewalInProgress")
    add_job(conn, "j1", "Renewal", certificate_id="c1", max_attempts=3)
    cfg = settings(retry_backoff_base=0.0)
    for _ in range(5):
        job_processor.run(make_ctx(pool, cfg))
        job_retry.run(make_ctx(pool, cfg))

    row = job_row(conn, "j1")
    assert (row["status"], row["attempts"]) == ("Failed", 3)
    assert "external" in row["last_error"]
    assert scalar(conn, "SELECT status FROM managed_certificates WHERE id='c1'") == "Failed"
    assert scalar(conn, "SELECT count(*) FROM audit_events WHERE action='job_retry'") == 2


def test_retry_leaves_a_job_whose_certificate_has_another_open_job(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    add_issuer(conn)
    add_certificate(conn, "c1")
    add_job(conn, "old", "Renewal", certificate_id="c1", status="Failed", attempts=1)
    add_job(conn, "new", "Renewal", certificate_id="c1")
    job_retry.run(make_ctx(pool, settings(retry_backoff_base=0.0)))
    assert job_row(conn, "old")["status"] == "Failed"


def test_timeouts_are_guarded_single_statements(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    recent = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    conn.execute(
        "INSERT INTO agents (id, name, last_heartbeat_at) VALUES "
        "('gone', 'gone', now() - interval '10 minutes'), ('alive', 'alive', now())"
    )
    add_job(conn, "csr-old", status="AwaitingCSR", status_changed_at=old)
    add_job(
        conn, "csr-recent", status="AwaitingCSR", status_changed_at=recent, created_at=old
    )  # age counts from entering the state, not from creation
    add_job(conn, "appr-old", status="AwaitingApproval", status_changed_at=old)
    add_job(
        conn,
        "appr-recent",
        status="AwaitingApproval",
        status_changed_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=6),
    )
    add_job(conn, "agent-gone", "Deployment", status="Running", agent_id="gone")
    add_job(conn, "agent-alive", "Deployment", status="Running", agent_id="alive", started_at=old)
    add_job(
        conn,
        "stuck",
        status="Running",
        started_at=recent - dt.timedelta(hours=1),
        claimed_by="dead-replica",
    )
    add_job(conn, "fresh", status="Running", started_at=dt.datetime.now(dt.UTC))
    add_job(conn, "approved", status="AwaitingApproval", status_changed_at=old)

    # An operator approves "approved" in a transaction that commits while job_timeout waits
    # on the row: the reaper's WHERE is re-checked on the committed row, so it is not reaped.
    with psycopg.connect(conn.info.dsn) as approver:
        approver.execute(
            "UPDATE jobs SET status='Pending', status_changed_at=now() WHERE id='approved'"
        )
        ctx = make_ctx(pool, loop="job_timeout")
        reaper = threading.Thread(target=job_timeout.run, args=(ctx,))
        reaper.start()
        waited = 0.0
        while waited < 5 and not scalar(
            conn, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ):
            time.sleep(0.02)
            waited += 0.02
        assert waited < 5, "job_timeout never waited on the approver's row lock"
        approver.commit()
    reaper.join(10)

    status = dict(conn.execute("SELECT id, status FROM jobs").fetchall())
    assert status == {
        "csr-old": "Failed",
        "csr-recent": "AwaitingCSR",
        "appr-old": "Failed",
        "appr-recent": "AwaitingApproval",
        "agent-gone": "Failed",
        "agent-alive": "Running",
        "stuck": "Failed",
        "fresh": "Running",
        "approved": "Pending",
    }
    assert job_row(conn, "csr-old")["last_error"] == "timed out in AwaitingCSR after 24h"
    assert job_row(conn, "appr-old")["last_error"] == "timed out in AwaitingApproval after 168h"
    assert "agent gone offline" in job_row(conn, "agent-gone")["last_error"]
    assert "dead-replica" in job_row(conn, "stuck")["last_error"]
    assert ctx.stats == {"reap_awaiting": 2, "reap_offline_agents": 1, "reap_running": 1}
    actions = dict(
        conn.execute("SELECT action, count(*) FROM audit_events GROUP BY action").fetchall()
    )
    assert actions == {"job_timeout": 2, "job_offline_agent_reap": 1, "job_running_timeout": 1}

    job_timeout.run(make_ctx(pool, loop="job_timeout"))  # a second run changes nothing
    assert scalar(conn, "SELECT count(*) FROM audit_events") == 4


@pytest.mark.parametrize("placement_loop", [job_processor, job_retry, job_timeout])
def test_build_declares_an_everywhere_loop(placement_loop: Any) -> None:
    spec = placement_loop.build(LoopsSettings())
    assert spec is not None and spec.placement == "everywhere" and spec.run_on_start
    disabled = LoopsSettings(
        jobs=dataclasses.replace(
            JobsSettings(),
            processor=dataclasses.replace(JobsSettings().processor, enabled=False),
            retry=dataclasses.replace(JobsSettings().retry, enabled=False),
            timeout=dataclasses.replace(JobsSettings().timeout, enabled=False),
        )
    )
    assert placement_loop.build(disabled) is None


def test_any_status_change_restarts_the_timeout_clock(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    add_job(conn, "j1", status="Pending", status_changed_at=old, created_at=old)
    # a writer that knows nothing about status_changed_at (an API, psql)
    conn.execute("UPDATE jobs SET status = 'AwaitingCSR' WHERE id = 'j1'")
    job_timeout.run(make_ctx(pool, loop="job_timeout"))
    assert job_row(conn, "j1")["status"] == "AwaitingCSR"
    conn.execute("UPDATE jobs SET attempts = 1 WHERE id = 'j1'")  # not a status change
    assert job_row(conn, "j1")["status_changed_at"] > old + dt.timedelta(days=29)
