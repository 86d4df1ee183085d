"""The leased loops under the real scheduler: two replicas, one holder, a failover."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from leasectl.certs import crl_generation, notification_send
from leasectl.certs.settings import (
    CrlLoop,
    CrlSettings,
    LoopsSettings,
    NotificationSendLoop,
    NotificationSettings,
    WebhookSettings,
)
from leasectl.lease_manager import LeaseManager
from leasectl.loop import LoopSpec
from leasectl.scheduler import Scheduler
from leasectl.settings import CoreSettings
from tests.ca_test_keys import TEST_CA_KEYS, seeded_ca
from tests.conftest import wait_until
from tests.integration.leased_helpers import Receiver

KEY = "sched-hmac"
NAMES = ["notification_send", "crl_generation"]


class Replica:
    def __init__(self, name: str, dsn: str, settings: LoopsSettings) -> None:
        specs = [notification_send.build(settings), crl_generation.build(settings)]
        self.manager = LeaseManager(name, NAMES, CoreSettings(), dsn=dsn)
        self.pool = ConnectionPool(dsn, min_size=1, max_size=4, open=True)
        self.scheduler = Scheduler(
            [s for s in specs if s is not None],
            replica_id=name,
            pool=self.pool,
            config=settings,
            lease_manager=self.manager,
        )
        self.manager.start()
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop(grace=5)
        self.manager.stop()
        self.pool.close()


def queue(conn: psycopg.Connection[Any], first: int, n: int) -> None:
    conn.execute(
        "INSERT INTO leasectl_certs.notification_events (id, type, channel, recipient, message) "
        "SELECT 'n-' || i, 'RenewalFailure', 'Webhook', 'team', 'renewal ' || i || ' failed' "
        "FROM generate_series(%s::int, %s::int) i",
        (first, first + n - 1),
    )


def sent(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM leasectl_certs.notification_events WHERE status = 'sent'"
    ).fetchone()
    return int(row[0]) if row else 0


def crl_events(conn: psycopg.Connection[Any]) -> list[tuple[int, int, str]]:
    return [
        (int(r[0]), int(r[1]), str(r[2]))
        for r in conn.execute(
            "SELECT crl_number, epoch, replica FROM leasectl_certs.crl_generation_events "
            "WHERE succeeded ORDER BY id"
        ).fetchall()
    ]


def test_two_replicas_one_sender_and_monotonic_crls_across_failover(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    cert_pem, key_pem, _ = seeded_ca("Scheduler CA")  # stored encrypted
    conn.execute(
        "INSERT INTO leasectl_certs.issuers (id, name, ca_cert_pem, ca_key_pem) VALUES ('ca', "
        "'CA', %s, %s)",
        (cert_pem, key_pem),
    )
    queue(conn, 1, 20)
    with Receiver(KEY) as rx:
        settings = LoopsSettings(
            notifications=NotificationSettings(
                send=NotificationSendLoop(interval=1.0),
                webhook=WebhookSettings(url=rx.url, hmac_key=KEY),
                allow_private_networks=("127.0.0.0/8",),
            ),
            ca=TEST_CA_KEYS,
            crl=CrlSettings(loop=CrlLoop(interval=1.0), next_update=3600.0),
        )
        replicas = {n: Replica(n, dsn, settings) for n in ("replica-a", "replica-b")}
        try:
            wait_until(lambda: sent(conn) == 20, 15, what="first batch sent")
            wait_until(lambda: len(crl_events(conn)) >= 2, 15, what="two CRLs")
            holder = next(
                n for n, r in replicas.items() if r.manager.lease("notification_send") is not None
            )
            replicas.pop(holder).stop()  # graceful failover: leases released with NOTIFY
            queue(conn, 21, 20)
            before = len(crl_events(conn))
            wait_until(lambda: sent(conn) == 40, 15, what="second batch sent by the survivor")
            wait_until(lambda: len(crl_events(conn)) >= before + 2, 15, what="CRLs after failover")
        finally:
            for r in replicas.values():
                r.stop()
    survivor = next(iter(replicas))
    keys = [x.key for x in rx.received]
    assert sorted(set(keys)) == sorted(f"n-{i}" for i in range(1, 41))
    assert all(x.signature_ok for x in rx.received)
    # A graceful handover re-delivers nothing: each key arrived exactly once.
    assert len(keys) == 40
    assert {x.replica for x in rx.received if int(x.key[2:]) > 20} == {survivor}
    events = crl_events(conn)
    numbers = [n for n, _, _ in events]
    assert numbers == list(range(1, len(numbers) + 1))  # strictly increasing, no gaps
    epochs = [e for _, e, _ in events]
    assert epochs == sorted(epochs)
    # The ledger: one row per (loop, slot), each from the epoch that held the lease.
    dupes = conn.execute(
        "SELECT loop, tick_at FROM leasectl_ticks GROUP BY 1, 2 HAVING count(*) > 1"
    ).fetchall()
    assert dupes == []


def test_run_on_start_false_leased_loop_runs_at_the_next_slot(dsn: str) -> None:
    ran: list[str] = []
    spec = LoopSpec(
        name="late_starter",
        interval=1.0,
        placement="leased",
        run=lambda ctx: ran.append(ctx.tick_at.isoformat()),
        run_on_start=False,
        jitter=0.0,
    )
    manager = LeaseManager("replica-a", ["late_starter"], CoreSettings(), dsn=dsn)
    with ConnectionPool(dsn, min_size=1, max_size=2, open=True) as pool:
        scheduler = Scheduler(
            [spec], replica_id="replica-a", pool=pool, config=None, lease_manager=manager
        )
        manager.start()
        scheduler.start()
        try:
            wait_until(lambda: ran, 4, what="a tick at the first slot after start")
        finally:
            scheduler.stop(grace=2)
            manager.stop()
