"""A steady feed of work for the replicas: webhook notifications, issuance jobs, revocations.

Everything the feed inserts carries the drill's run prefix, so the invariants look only at
the drill's own rows (a drill may run against a database that has other data).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from leasectl import sql

Q = sql.load("drill", package="leasectl.tools.drill")


class Feed:
    """Inserts ``notifications_per_s`` notifications and ``jobs_per_s`` jobs per second."""

    def __init__(
        self,
        dsn: str,
        run_id: str,
        *,
        notifications_per_s: float = 5.0,
        jobs_per_s: float = 2.0,
        revocations_per_s: float = 0.5,
    ) -> None:
        self.dsn = dsn
        self.run_id = run_id
        self.notifications_per_s = notifications_per_s
        self.jobs_per_s = jobs_per_s
        self.revocations_per_s = revocations_per_s
        self.owner_id = f"drill-{run_id}-owner"
        self.issuer_id = f"drill-{run_id}-issuer"
        self.notifications: list[str] = []
        self.jobs: list[str] = []
        #: id -> when its insert was acknowledged (a failover may lose acknowledged rows)
        self.inserted_at: dict[str, float] = {}
        self.errors = 0
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def prefix(self) -> str:
        return f"drill-{self.run_id}-"

    def seed(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(Q["seed_owner"], {"owner_id": self.owner_id})
            conn.execute(Q["seed_issuer"], {"issuer_id": self.issuer_id})

    def start(self) -> None:
        self.seed()
        self._thread = threading.Thread(target=self._run, name="drill-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)

    def _run(self) -> None:
        step = 0.1
        due: dict[str, float] = {"n": 0.0, "j": 0.0, "r": 0.0}
        rates = {"n": self.notifications_per_s, "j": self.jobs_per_s, "r": self.revocations_per_s}
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.wait(step):
            for k, rate in rates.items():
                due[k] += rate * step
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
                while due["n"] >= 1:
                    self._notification(conn)
                    due["n"] -= 1
                while due["j"] >= 1:
                    self._job(conn)
                    due["j"] -= 1
                while due["r"] >= 1:
                    self._revocation(conn)
                    due["r"] -= 1
            except psycopg.Error:
                # The server is being restarted by a db-restart round: try again next step.
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.2)
        if conn is not None:
            conn.close()

    def _next(self, kind: str) -> str:
        self._seq += 1
        return f"{self.prefix}{kind}{self._seq:07d}"

    def _notification(self, conn: psycopg.Connection[Any]) -> None:
        nid = self._next("n")
        conn.execute(
            Q["insert_notification"],
            {
                "id": nid,
                "subject": f"drill ping {nid}",
                "message": "leasectl drill notification",
                "payload": Jsonb({"drill": self.run_id, "inserted_at": time.time()}),
            },
        )
        self.notifications.append(nid)
        self.inserted_at[nid] = time.time()

    def _job(self, conn: psycopg.Connection[Any]) -> None:
        jid = self._next("j")
        conn.execute(
            Q["insert_job"],
            {
                "job_id": jid,
                "cert_id": jid + "-cert",
                "common_name": f"{jid}.drill.invalid",
                "owner_id": self.owner_id,
                "issuer_id": self.issuer_id,
            },
        )
        self.jobs.append(jid)
        self.inserted_at[jid] = time.time()

    def _revocation(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(Q["revoke_one"], {"serial": uuid.uuid4().hex, "issuer_id": self.issuer_id})
