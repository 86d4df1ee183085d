"""job_processor, job_retry and job_timeout against the real database."""

from __future__ import annotations

import dataclasses
import datetime as dt
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from psycopg_pool import ConnectionPool

from leasectl.certs import job_processor, job_retry, job_timeout
from leasectl.certs.settings import JobsSettings, LoopsSettings
from leasectl.loop import TickContext
from tests.ca_test_keys import TEST_CA_KEYS, TEST_KEK
from tests.conftest import wait_until
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
from tests.integration.leased_helpers import one_connection_pool, pool_for, terminate_backends

__all__ = ["pool"]  # the fixture


def settings(**jobs: Any) -> LoopsSettings:
    return LoopsSettings(jobs=dataclasses.replace(JobsSettings(), **jobs), ca=TEST_CA_KEYS)


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
    rows = conn.execute(
        "SELECT status, attempts, claimed_by, started_at FROM leasectl_certs.jobs"
    ).fetchall()
    assert {r[0] for r in rows} == {"Completed"}
    assert {r[1] for r in rows} == {1}  # claimed once each: never processed twice
    assert all(r[3] is not None for r in rows)
    assert (
        scalar(conn, "SELECT count(DISTINCT job_id) FROM leasectl_certs.certificate_versions") == n
    )
    assert scalar(conn, "SELECT count(*) FROM leasectl_certs.certificate_versions") == n
    assert (
        scalar(
            conn, "SELECT count(*) FROM leasectl_certs.audit_events WHERE action='job_completed'"
        )
        == n
    )

    versions = conn.execute(
        "SELECT v.certificate_id, v.pem_chain, v.serial_number, v.fingerprint_sha256, "
        "v.not_after, c.expires_at, c.status, c.last_renewal_at, c.common_name "
        "FROM leasectl_certs.certificate_versions v JOIN leasectl_certs.managed_certificates c "
        "ON c.id = v.certificate_id"
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
    conn.execute("INSERT INTO leasectl_certs.issuers (id, name) VALUES ('fresh', 'Fresh')")
    for i in range(6):
        add_certificate(conn, f"c{i}", issuer_id="fresh", status="Pending", expires_in=None)
        add_job(conn, f"j{i}", certificate_id=f"c{i}")
    cfg = settings(claim_batch=1, concurrency=1)
    ctx_a, ctx_b = make_ctx(pool, cfg, replica="a"), make_ctx(pool, cfg, replica="b")

    run_concurrently(lambda: job_processor.run(ctx_a), lambda: job_processor.run(ctx_b))

    ca_pem = scalar(conn, "SELECT ca_cert_pem FROM leasectl_certs.issuers WHERE id='fresh'")
    ca_cert = x509.load_pem_x509_certificate(ca_pem.encode())
    chains = [
        r[0] for r in conn.execute("SELECT pem_chain FROM leasectl_certs.certificate_versions")
    ]
    assert len(chains) == 6
    for chain in chains:  # every leaf chains to the one stored CA, whoever created it
        x509.load_pem_x509_certificates(chain.encode())[0].verify_directly_issued_by(ca_cert)


def test_validation_and_unroutable_jobs_fail_and_agent_jobs_are_not_claimed(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    add_issuer(conn)
    add_certificate(conn, "c1")
    conn.execute("INSERT INTO leasectl_certs.agents (id, name) VALUES ('ag1', 'ag1')")
    conn.execute(
        "INSERT INTO leasectl_certs.issuers (id, name, type) VALUES ('acme1', 'acme', 'acme')"
    )
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
    assert (
        scalar(conn, "SELECT count(*) FROM leasectl_certs.audit_events WHERE action='job_failed'")
        == 3
    )


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
    conn.execute(
        "UPDATE leasectl_certs.jobs SET started_at = now() - interval '2 hours' WHERE id='j1'"
    )
    job_timeout.run(make_ctx(pool, loop="job_timeout"))
    assert job_row(conn, "j1")["status"] == "Failed"
    job_retry.run(make_ctx(pool, settings(retry_backoff_base=0.0), loop="job_retry"))
    assert job_row(conn, "j1")["status"] == "Pending"
    ctx_b = make_ctx(pool, replica="replica-b")
    job_processor.run(ctx_b)

    job_processor.process(ctx_a, claimed, ctx_a.config)  # the stale claim wakes up

    assert ctx_a.stats["lost"] == 1 and ctx_b.stats["completed"] == 1
    row = job_row(conn, "j1")
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("Completed", 2, "replica-b")
    assert scalar(conn, "SELECT count(*) FROM leasectl_certs.certificate_versions") == 1


def test_a_stale_batched_completion_leaves_reclaimed_jobs_alone(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    add_issuer(conn)
    for i in range(1, 4):
        add_certificate(conn, f"c{i}", status="Pending", expires_in=None)
        add_job(conn, f"j{i}", certificate_id=f"c{i}")
    ctx_a = make_ctx(pool, replica="replica-a")
    claimed = job_processor.claim(ctx_a, 10)
    assert sorted(j["id"] for j in claimed) == ["j1", "j2", "j3"]
    # replica-a stalls past the claim timeout on j1 and j2: reaped, retried, claimed again -
    # j1 by replica-a itself (restarted under the same id: only the attempt differs), j2 by b.
    conn.execute(
        "UPDATE leasectl_certs.jobs SET started_at = now() - interval '2 hours' WHERE id <> 'j3'"
    )
    job_timeout.run(make_ctx(pool, loop="job_timeout"))
    job_retry.run(make_ctx(pool, settings(retry_backoff_base=0.0), loop="job_retry"))
    assert [j["id"] for j in job_processor.claim(make_ctx(pool, replica="replica-a"), 1)] == ["j1"]
    assert [j["id"] for j in job_processor.claim(make_ctx(pool, replica="replica-b"), 1)] == ["j2"]

    # The stale claimer wakes up and completes all three in one batched flush.
    job_processor.process(ctx_a, claimed, settings(complete_batch=100))

    assert ctx_a.stats == {"claimed": 3, "completed": 1, "lost": 2}
    rows = {
        r[0]: r[1:]
        for r in conn.execute("SELECT id, status, attempts, claimed_by FROM leasectl_certs.jobs")
    }
    assert rows == {
        "j1": ("Running", 2, "replica-a"),
        "j2": ("Running", 2, "replica-b"),
        "j3": ("Completed", 1, "replica-a"),
    }
    assert [
        r[0] for r in conn.execute("SELECT job_id FROM leasectl_certs.certificate_versions")
    ] == ["j3"]
    completed = conn.execute(
        "SELECT resource_id FROM leasectl_certs.audit_events WHERE action = 'job_completed'"
    ).fetchall()
    assert completed == [("j3",)]
    assert (
        scalar(conn, "SELECT status FROM leasectl_certs.managed_certificates WHERE id = 'c1'")
        == "Pending"
    )


def _count_completed(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        return int(scalar(c, "SELECT count(*) FROM leasectl_certs.jobs WHERE status = 'Completed'"))


def test_completions_flush_at_size_and_at_age(
    conn: psycopg.Connection[Any], pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_issuer(conn)
    for i in range(8):
        add_certificate(conn, f"c{i}", status="Pending", expires_in=None)
        add_job(conn, f"j{i}", certificate_id=f"c{i}")
    seen: list[int] = []
    issue = job_processor.HANDLERS["Issuance"]

    def observe(
        ctx: TickContext, job: dict[str, Any], cfg: LoopsSettings
    ) -> job_processor.Completion:
        # One worker runs the jobs in order: before job k, the size-3 flushes of the k - 1
        # finished ones are committed; nothing ever comes due by age (an hour).
        seen.append(_count_completed(conn.info.dsn))
        return issue(ctx, job, cfg)

    monkeypatch.setitem(job_processor.HANDLERS, "Issuance", observe)
    cfg = settings(concurrency=1, complete_batch=3, complete_flush_interval=3600.0)
    ctx = make_ctx(pool, cfg)
    job_processor.run(ctx)
    assert seen == [0, 0, 0, 3, 3, 3, 6, 6]
    assert _count_completed(conn.info.dsn) == 8  # the last two at the tick's end
    assert ctx.stats == {"claimed": 8, "completed": 8}

    # By age: a lone finished job is committed within the flush interval, while its tick runs.
    add_certificate(conn, "d0", status="Pending", expires_in=None)
    add_certificate(conn, "d1", status="Pending", expires_in=None)
    add_job(conn, "k0", certificate_id="d0")
    add_job(conn, "k1", certificate_id="d1")

    def wait_for_the_first(
        ctx: TickContext, job: dict[str, Any], cfg: LoopsSettings
    ) -> job_processor.Completion:
        if job["id"] == "k1":
            wait_until(lambda: job_row(conn, "k0")["status"] == "Completed", timeout=10)
        return issue(ctx, job, cfg)

    monkeypatch.setitem(job_processor.HANDLERS, "Issuance", wait_for_the_first)
    cfg = settings(concurrency=1, complete_batch=1000, complete_flush_interval=0.05)
    ctx = make_ctx(pool, cfg)
    job_processor.run(ctx)
    assert ctx.stats == {"claimed": 2, "completed": 2}


def test_a_stop_flushes_finished_jobs_and_releases_the_rest(
    conn: psycopg.Connection[Any], pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_issuer(conn)
    for i in range(10):
        add_certificate(conn, f"c{i}", status="Pending", expires_in=None)
        add_job(conn, f"j{i}", certificate_id=f"c{i}")
    issue = job_processor.HANDLERS["Issuance"]
    finished: list[str] = []

    def stop_after_four(
        ctx: TickContext, job: dict[str, Any], cfg: LoopsSettings
    ) -> job_processor.Completion:
        done = issue(ctx, job, cfg)
        finished.append(job["id"])
        if len(finished) == 4:
            ctx.stop.set()  # SIGTERM arrives while the fourth job finishes
        return done

    monkeypatch.setitem(job_processor.HANDLERS, "Issuance", stop_after_four)
    # Nothing would flush by size or age: only the stop (the tick's end) commits them.
    cfg = settings(
        claim_batch=20, concurrency=1, complete_batch=1000, complete_flush_interval=3600.0
    )
    ctx = make_ctx(pool, cfg)
    job_processor.run(ctx)

    assert ctx.stats == {"claimed": 10, "completed": 4, "released": 6}
    rows = {
        r[0]: r[1:] for r in conn.execute("SELECT id, status, attempts FROM leasectl_certs.jobs")
    }
    assert {j: rows[j] for j in finished} == {j: ("Completed", 1) for j in finished}
    assert sorted(v for j, v in rows.items() if j not in finished) == [("Pending", 0)] * 6
    assert scalar(conn, "SELECT count(*) FROM leasectl_certs.certificate_versions") == 4


_VICTIM = """
import dataclasses, datetime as dt, sys, time
from psycopg_pool import ConnectionPool
from leasectl.loop import TickContext
from leasectl.certs import job_processor
from leasectl.certs.settings import CaSettings, JobsSettings, LoopsSettings

pool = ConnectionPool(sys.argv[1], min_size=1, max_size=4, open=True)
cfg = LoopsSettings(ca=CaSettings(kek=sys.argv[2]), jobs=dataclasses.replace(
    JobsSettings(), claim_batch=10, concurrency=2, complete_batch=5,
    complete_flush_interval=3600.0))
issue = job_processor.HANDLERS["Issuance"]

def paced(ctx, job, settings):
    time.sleep(0.005)  # paces the worker so that the test can kill it mid-batch
    return issue(ctx, job, settings)

job_processor.HANDLERS["Issuance"] = paced
while True:
    job_processor.run(TickContext(
        loop="job_processor", replica_id="victim", pool=pool, config=cfg,
        tick_at=dt.datetime.now(dt.UTC), deadline=time.monotonic() + 600))
"""


def test_sigkill_mid_batch_loses_no_job_and_completes_each_once(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    add_issuer(conn)
    n = 300
    for i in range(n):
        add_certificate(conn, f"c{i}", status="Pending", expires_in=None)
        add_job(conn, f"j{i:03d}", certificate_id=f"c{i}")
    repo = Path(__file__).resolve().parents[2]
    victim = subprocess.Popen([sys.executable, "-c", _VICTIM, conn.info.dsn, TEST_KEK], cwd=repo)
    try:

        def mid_batch() -> bool:
            done, running = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'Completed'),"
                " count(*) FILTER (WHERE status = 'Running') FROM leasectl_certs.jobs"
            ).fetchone() or (0, 0)
            return done >= 20 and running > 0

        wait_until(mid_batch, timeout=60, what="the victim has completed some jobs")
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
    assert victim.returncode == -signal.SIGKILL
    before = dict(
        conn.execute("SELECT status, count(*) FROM leasectl_certs.jobs GROUP BY status").fetchall()
    )
    assert before.get("Running", 0) > 0 and 0 < before.get("Completed", 0) < n
    status = dict(conn.execute("SELECT id, status FROM leasectl_certs.jobs").fetchall())
    killed_done = {j for j, st in status.items() if st == "Completed"}
    in_flight = {j for j, st in status.items() if st == "Running"}  # claimed, never committed
    # Every committed completion came with its version and audit row; nothing else did.
    assert {
        r[0] for r in conn.execute("SELECT job_id FROM leasectl_certs.certificate_versions")
    } == killed_done

    # The claim timeout passes: job_timeout fails the dead claimer's jobs, job_retry puts them
    # back and another replica runs everything that is left.
    cfg = settings(running_timeout=0.0, retry_backoff_base=0.0)
    job_timeout.run(make_ctx(pool, cfg, loop="job_timeout"))
    job_retry.run(make_ctx(pool, cfg, loop="job_retry"))
    job_processor.run(make_ctx(pool, cfg, replica="survivor"))

    rows = conn.execute(
        "SELECT id, status, attempts, claimed_by FROM leasectl_certs.jobs"
    ).fetchall()
    assert {r[1] for r in rows} == {"Completed"}
    expected = {
        j: (1, "victim")
        if j in killed_done
        else (2, "survivor")
        if j in in_flight
        else (1, "survivor")
        for j in status
    }
    assert {r[0]: r[2:] for r in rows} == expected
    versions = conn.execute(
        "SELECT job_id, count(*) FROM leasectl_certs.certificate_versions GROUP BY job_id"
    )
    assert dict(versions.fetchall()) == {r[0]: 1 for r in rows}
    audits = conn.execute(
        "SELECT resource_id, count(*) FROM leasectl_certs.audit_events WHERE action = "
        "'job_completed'"
        " GROUP BY resource_id"
    )
    assert dict(audits.fetchall()) == {r[0]: 1 for r in rows}
    assert (
        scalar(
            conn,
            "SELECT count(*) FROM leasectl_certs.managed_certificates WHERE status <> 'Active'",
        )
        == 0
    )


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

    job_processor.process(ctx, claimed, ctx.config)

    assert ctx.stats["released"] == 3
    rows = conn.execute("SELECT status, attempts, claimed_by FROM leasectl_certs.jobs").fetchall()
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
    statuses = dict(
        conn.execute("SELECT id, status FROM leasectl_certs.managed_certificates").fetchall()
    )
    assert statuses == {
        "c0": "RenewalInProgress",
        "c1": "RenewalInProgress",
        "c2": "RenewalInProgress",
        "c3": "Failed",
    }
    # two replicas at once: each retry (and each exhausted certificate) audited once
    assert (
        scalar(conn, "SELECT count(*) FROM leasectl_certs.audit_events WHERE action='job_retry'")
        == 3
    )
    assert (
        scalar(
            conn,
            "SELECT count(*) FROM leasectl_certs.audit_events WHERE "
            "action='certificate_renewal_exhausted'",
        )
        == 1
    )
    # scheduled in the future: the processor does not take them yet
    job_processor.run(make_ctx(pool, cfg))
    assert {job_row(conn, j)["attempts"] for j in ("first", "second")} == {1, 2}


def test_failing_job_stops_at_max_attempts(
    conn: psycopg.Connection[Any], pool: ConnectionPool
) -> None:
    conn.execute(
        "INSERT INTO leasectl_certs.issuers (id, name, type) VALUES ('ext', 'ext', 'external')"
    )
    add_certificate(conn, "c1", issuer_id="ext", status="RenewalInProgress")
    add_job(conn, "j1", "Renewal", certificate_id="c1", max_attempts=3)
    cfg = settings(retry_backoff_base=0.0)
    for _ in range(5):
        job_processor.run(make_ctx(pool, cfg))
        job_retry.run(make_ctx(pool, cfg))

    row = job_row(conn, "j1")
    assert (row["status"], row["attempts"]) == ("Failed", 3)
    assert "external" in row["last_error"]
    assert (
        scalar(conn, "SELECT status FROM leasectl_certs.managed_certificates WHERE id='c1'")
        == "Failed"
    )
    assert (
        scalar(conn, "SELECT count(*) FROM leasectl_certs.audit_events WHERE action='job_retry'")
        == 2
    )


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
        "INSERT INTO leasectl_certs.agents (id, name, last_heartbeat_at) VALUES "
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
            "UPDATE leasectl_certs.jobs SET status='Pending', status_changed_at=now() WHERE "
            "id='approved'"
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

    status = dict(conn.execute("SELECT id, status FROM leasectl_certs.jobs").fetchall())
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
        conn.execute(
            "SELECT action, count(*) FROM leasectl_certs.audit_events GROUP BY action"
        ).fetchall()
    )
    assert actions == {"job_timeout": 2, "job_offline_agent_reap": 1, "job_running_timeout": 1}

    job_timeout.run(make_ctx(pool, loop="job_timeout"))  # a second run changes nothing
    assert scalar(conn, "SELECT count(*) FROM leasectl_certs.audit_events") == 4


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
    conn.execute("UPDATE leasectl_certs.jobs SET status = 'AwaitingCSR' WHERE id = 'j1'")
    job_timeout.run(make_ctx(pool, loop="job_timeout"))
    assert job_row(conn, "j1")["status"] == "AwaitingCSR"
    conn.execute(
        "UPDATE leasectl_certs.jobs SET attempts = 1 WHERE id = 'j1'"
    )  # not a status change
    assert job_row(conn, "j1")["status_changed_at"] > old + dt.timedelta(days=29)


def test_jobs_a_dead_tick_left_running_are_run_by_the_next_tick(
    dsn: str, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work connection is terminated right after a tick's claim commits, and the tick
    cannot hand its jobs back (the hand-back runs on the dead connection): they stay Running,
    claimed by this replica. The replica's next tick runs them at once under a new attempt,
    not running_timeout (1 h) later; a job at its last attempt is left to job_timeout."""
    add_issuer(conn)
    for i, max_attempts in ((0, 3), (1, 3), (2, 1)):
        add_certificate(conn, f"c{i}", status="Pending", expires_in=None)
        add_job(conn, f"j{i}", certificate_id=f"c{i}", max_attempts=max_attempts)
    app_name = "i23-jobs-work"
    fired: list[int] = []
    claim = job_processor.claim

    def claim_then_kill(ctx: TickContext, limit: int, *, adopt: bool = False) -> Any:
        jobs = claim(ctx, limit, adopt=adopt)
        if not fired:
            fired.append(terminate_backends(conn, app_name))
            ctx.stop.set()  # a shutdown at that instant: the tick hands back, and cannot
        return jobs

    monkeypatch.setattr(job_processor, "claim", claim_then_kill)
    with one_connection_pool(dsn, app_name) as work:
        with pytest.raises(psycopg.OperationalError):
            job_processor.run(make_ctx(work, settings()))
        assert fired == [1]
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT id, status, attempts, claimed_by FROM leasectl_certs.jobs"
            )
        }
        assert rows == {j: ("Running", 1, "replica-a") for j in ("j0", "j1", "j2")}

        ctx = make_ctx(work, settings())
        job_processor.run(ctx)  # the same replica's next tick
    assert ctx.stats == {"claimed": 2, "completed": 2}
    rows = {
        r[0]: r[1:]
        for r in conn.execute("SELECT id, status, attempts, claimed_by FROM leasectl_certs.jobs")
    }
    assert rows == {
        "j0": ("Completed", 2, "replica-a"),
        "j1": ("Completed", 2, "replica-a"),
        "j2": ("Running", 1, "replica-a"),  # its last attempt: job_timeout's to fail
    }
    versions = conn.execute(
        "SELECT job_id FROM leasectl_certs.certificate_versions ORDER BY job_id"
    ).fetchall()
    assert versions == [("j0",), ("j1",)]
    # Another replica's Running job is never taken.
    add_certificate(conn, "c3", status="Pending", expires_in=None)
    add_job(conn, "j3", certificate_id="c3", status="Running", attempts=1, claimed_by="replica-b")
    with pool_for(dsn) as work:
        job_processor.run(make_ctx(work, settings()))
    assert job_row(conn, "j3")["status"] == "Running"
