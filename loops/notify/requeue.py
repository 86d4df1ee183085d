"""Requeue dead-lettered notifications (certctl's ``POST /notifications/{id}/requeue``).

A dead row is only the end of one delivery: requeueing it resets the attempt budget and the
claim so ``notification_send`` delivers it again with the same id (the same idempotency key,
``dedup_key`` and ``alias``). An expiry alert's uniqueness is per (certificate, threshold,
channel), so neither a dead row nor its requeue holds back the alert of the next threshold
(certctl's defect 5 counted failed and dead alerts as sent and never alerted again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from leasectl import sql

Q = sql.load("notifications", package="leasectl.certs.sql")


def requeue(conn: psycopg.Connection[Any], ids: Sequence[str]) -> list[str]:
    """Requeue the dead or failed rows among ``ids``; return the ids that were requeued.

    Rows in any other state (sent, pending, being delivered) are left as they are.
    """
    with conn.transaction():
        rows = conn.execute(Q["requeue"], {"ids": list(ids)}).fetchall()
    return [str(r[0]) for r in rows]
