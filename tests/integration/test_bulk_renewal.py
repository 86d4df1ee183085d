"""bench/bulk_renewal.py at a small N: its invariants hold with three real replicas.

Three ``leasectl run`` processes renew 50 certificates due at once (renewal_check -> jobs ->
job_processor signing real certificates -> completed) and deliver their expiry alerts to a real
signed-webhook receiver; then exactly one new version per certificate, one job per certificate,
every alert delivered once and no notification key received twice.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg

from leasectl.certs import renewal_check
from tests.conftest import wait_until
from tests.integration.everywhere_helpers import add_certificate, add_issuer, scalar

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bulk_renewal.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_bulk_renewal", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_bulk_renewal_invariants_at_small_n(dsn: str) -> None:
    bench = _bench()

    receipt = bench.run(dsn, 50, replica_count=3, timeout=120.0)

    assert receipt.invariants and all(receipt.invariants.values()), receipt.invariants
    assert receipt.problems == []
    assert receipt.seconds > 0 and receipt.certs_per_second > 0
    assert receipt.stats["xact_commit"] > 0


def test_a_job_created_and_completed_during_a_renewal_statement_gets_no_twin(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    """The race bench/bulk_renewal.py found (1 run in 4 at N = 10,000 renewed some twice).

    Replica A's create_renewal_jobs reads its candidates from a snapshot taken while replica
    B's job for the same certificate was not yet visible; when B's job is completed (no longer
    open) before A's insert checks the unique index, the index sees no conflict. A here runs
    while B's transaction has created the job, and B then completes it and renews the
    certificate before committing: A must not create a second job.
    """
    add_issuer(conn)
    add_certificate(conn, "c1", expires_in=dt.timedelta(days=10))  # inside the 30-day window
    params = {"default_window": 30, "default_max_attempts": 3, "limit": 1000, "actor": "a"}
    created: list[Any] = []

    def replica_a() -> None:
        with psycopg.connect(dsn, autocommit=True) as a:
            created.extend(a.execute(renewal_check.Q["create_renewal_jobs"], params).fetchall())

    with psycopg.connect(dsn) as b:
        b.execute(
            "INSERT INTO leasectl_certs.jobs (id, type, certificate_id) VALUES ('b-job', "
            "'Renewal', 'c1')"
        )
        b.execute(
            "UPDATE leasectl_certs.managed_certificates SET status = 'RenewalInProgress' "
            "WHERE id = 'c1'"
        )
        a = threading.Thread(target=replica_a)
        a.start()
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        wait_until(lambda: not a.is_alive() or scalar(conn, waiting) > 0, what="A ran or waits")
        b.execute("UPDATE leasectl_certs.jobs SET status = 'Completed' WHERE id = 'b-job'")
        b.execute(
            "UPDATE leasectl_certs.managed_certificates SET status = 'Active',"
            " expires_at = now() + interval '90 days' WHERE id = 'c1'"
        )
        b.commit()
        a.join(10)

    assert not a.is_alive() and created == []
    assert scalar(conn, "SELECT count(*) FROM leasectl_certs.jobs WHERE certificate_id = 'c1'") == 1
    assert (
        scalar(conn, "SELECT status FROM leasectl_certs.managed_certificates WHERE id = 'c1'")
        == "Active"
    )
