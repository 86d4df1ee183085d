"""job_retry: put Failed jobs with attempts left back to Pending, after an exponential backoff.

One tick runs one statement that picks Failed jobs with ``attempts < max_attempts`` using
``FOR UPDATE SKIP LOCKED``, sets them Pending with ``scheduled_at = now + base * 2^(attempts-1)``
(capped at ``jobs.retry_backoff_max``) and writes one ``job_retry`` audit row each; a second
statement marks Failed the certificates whose latest renewal/issuance job used its last attempt.
Jobs at ``max_attempts`` stay Failed: ``attempts`` is incremented by every claim, so unlike
certctl (defect #2) a failing job is not retried forever.

Why ``everywhere`` is safe: SKIP LOCKED gives each Failed row to one replica per moment and the
UPDATE re-checks ``status = 'Failed'`` on the row it locked, so two replicas never both retry
(or audit) the same failure; the certificate update is guarded by its status, so it happens once.
"""

from __future__ import annotations

import psycopg

from leasectl.certs._common import actor, everywhere, transaction
from leasectl.certs.settings import LoopsSettings
from leasectl.loop import LoopSpec, TickContext
from leasectl.sql import load

Q = load("job_retry", package="leasectl.certs.sql")

NAME = "job_retry"
TIMEOUT = 120.0
BATCH = 1000


def run(ctx: TickContext) -> None:
    """One tick: retry what may be retried, in batches, then fail exhausted certificates."""
    settings: LoopsSettings = ctx.config
    params = {
        "limit": BATCH,
        "base": float(settings.jobs.retry_backoff_base),
        "cap": float(settings.jobs.retry_backoff_max),
        "actor": actor(ctx),
    }
    while True:
        ctx.check()
        try:
            with transaction(ctx) as cur:
                cur.execute(Q["retry"], params)
                retried = cur.fetchall()
        except psycopg.errors.UniqueViolation:
            # A renewal job for the same certificate was opened concurrently; the statement
            # rolled back whole, and the next tick retries the rest (the NOT EXISTS skips it).
            ctx.log.warning("job_retry raced a new open job for a certificate; retrying next tick")
            ctx.count("conflicts")
            break
        ctx.count("retried", len(retried))
        if len(retried) < BATCH:
            break
    with transaction(ctx) as cur:
        cur.execute(Q["fail_exhausted_certificates"], {"actor": actor(ctx)})
        ctx.count("certificates_failed", len(cur.fetchall()))


def build(settings: LoopsSettings) -> LoopSpec | None:
    """The loop, or None when ``loops.jobs.retry.enabled`` is false."""
    return everywhere(
        NAME,
        settings.jobs.retry,
        run,
        timeout=TIMEOUT,
        run_on_start=True,
        description="Failed -> Pending while attempts < max_attempts, with exponential backoff",
    )
