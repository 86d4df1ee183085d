"""job_processor: claim due Pending jobs and run them; Issuance/Renewal sign through the local CA.

One tick claims up to ``jobs.claim_batch`` jobs in a single ``UPDATE ... FROM (SELECT ... FOR
UPDATE SKIP LOCKED LIMIT n)`` statement that sets them Running, stamps ``started_at``,
increments ``attempts`` and records ``claimed_by``; then it runs them on at most
``jobs.concurrency`` threads:

- Issuance / Renewal: issue a real X.509 certificate with the issuer's local CA (created on
  first use), and in ONE transaction complete the job, store the version (unique per job) and
  make the certificate Active with its new ``expires_at``.
- Validation: failed with a clear error (leasectl has no validation step).
- Deployment without an agent: failed with a clear error. Deployment jobs routed to an agent are
  never claimed: they belong to the agent's own claim (certctl defect #3).

Why ``everywhere`` is safe: SKIP LOCKED hands every job to exactly one claimer, and every
later write is guarded by ``status = 'Running' AND claimed_by = me AND attempts = <claimed
attempt>``. If job_timeout reaped the job meanwhile (or another replica re-claimed it after a
retry), the guard matches nothing and the transaction that would store a certificate is rolled
back, so a job is never completed twice. A replica that crashes mid-job leaves it Running;
job_timeout fails it after ``jobs.running_timeout`` and job_retry puts it back, so no job is lost.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from psycopg.types.json import Jsonb

from leasectl.errors import LeaseLost, TickCancelled
from leasectl.loop import LoopSpec, TickContext
from leasectl.sql import load
from loops import ca, metrics
from loops._common import actor, everywhere, transaction
from loops.settings import LoopsSettings

Q = load("job_processor", package="loops.sql")

NAME = "job_processor"
TIMEOUT = 120.0  # certctl: 2 minutes per run


class JobError(Exception):
    """The job cannot succeed as it stands; it is failed with this message as ``last_error``."""


class _ClaimLost(Exception):
    """The guarded completion matched nothing: the job is no longer ours."""


@functools.lru_cache(maxsize=64)
def _issuer_ca(
    cert_pem: str, key_pem: str
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    # Parsing a key per job would be wasted work at thousands of jobs per minute.
    return ca.load_issuer_ca(cert_pem, key_pem)


def ensure_issuer_ca(ctx: TickContext, issuer_id: str, issuer_name: str) -> tuple[str, str]:
    """The issuer's CA PEMs, creating them once if the local issuer has none yet.

    Two replicas may create a CA at the same moment; the guarded UPDATE keeps the first and
    both then read the stored one, so every certificate of an issuer chains to one CA.
    """
    cert_pem, key_pem = ca.create_ca(f"{issuer_name} (leasectl local CA)")
    with transaction(ctx) as cur:
        cur.execute(
            Q["set_issuer_ca"], {"issuer_id": issuer_id, "cert_pem": cert_pem, "key_pem": key_pem}
        )
        cur.execute(Q["issuer_ca"], {"issuer_id": issuer_id})
        row = cur.fetchone()
    if row is None or not row["ca_key_pem"]:
        raise JobError(f"issuer {issuer_id} has no local CA and none could be created")
    return str(row["ca_cert_pem"]), str(row["ca_key_pem"])


def _validity(subject: dict[str, Any], default_days: int) -> tuple[float, int | None]:
    """Days, or a TTL in seconds when the certificate's profile caps it below the default."""
    max_ttl = subject["max_ttl_seconds"] or 0
    if max_ttl > 0 and max_ttl < default_days * 86400:
        return default_days, int(max_ttl)
    return default_days, None


def _issue(ctx: TickContext, job: dict[str, Any], settings: LoopsSettings) -> None:
    if job["certificate_id"] is None:
        raise JobError(f"{job['type']} job has no certificate_id")
    with transaction(ctx) as cur:
        cur.execute(Q["job_subject"], {"certificate_id": job["certificate_id"]})
        subject = cur.fetchone()
    if subject is None:
        raise JobError(f"certificate {job['certificate_id']} does not exist")
    if subject["issuer_id"] is None:
        raise JobError(f"certificate {subject['id']} has no issuer_id")
    if subject["issuer_type"] != "local":
        raise JobError(
            f"issuer {subject['issuer_id']} is of type {subject['issuer_type']!r}; "
            "only 'local' issuers are signed by leasectl's CA"
        )
    if not subject["issuer_enabled"]:
        raise JobError(f"issuer {subject['issuer_id']} is disabled")
    cert_pem, key_pem = subject["ca_cert_pem"], subject["ca_key_pem"]
    if not key_pem:
        cert_pem, key_pem = ensure_issuer_ca(ctx, subject["issuer_id"], subject["issuer_name"])
    try:
        ca_cert, ca_key = _issuer_ca(cert_pem, key_pem)
    except ca.CAError as exc:
        raise JobError(f"issuer {subject['issuer_id']}: {exc}") from exc
    days, ttl = _validity(subject, settings.jobs.cert_validity_days)
    key_type: ca.KeyType = "rsa" if settings.jobs.key_type == "rsa" else "ec"
    issued = ca.issue_leaf(
        ca_cert,
        ca_key,
        subject["common_name"],
        list(subject["sans"] or []),
        days=days,
        ttl_seconds=ttl,
        key_type=key_type,
    )
    guard = {"id": job["id"], "replica": ctx.replica_id, "attempts": job["attempts"]}
    with transaction(ctx) as cur:
        cur.execute(Q["complete"], guard)
        if cur.fetchone() is None:
            raise _ClaimLost(job["id"])
        cur.execute(
            Q["store_version"],
            {
                "certificate_id": subject["id"],
                "serial": issued.serial_hex,
                "not_before": issued.not_before,
                "not_after": issued.not_after,
                "fingerprint": issued.fingerprint_sha256,
                "pem_chain": issued.chain_pem,
                "key_algorithm": issued.key_algorithm,
                "key_size": issued.key_size,
                "job_id": job["id"],
            },
        )
        cur.execute(
            Q["activate_certificate"],
            {"certificate_id": subject["id"], "not_after": issued.not_after},
        )
        cur.execute(
            Q["audit"],
            {
                "actor": actor(ctx),
                "action": "job_completed",
                "job_id": job["id"],
                "details": Jsonb(
                    {
                        "type": job["type"],
                        "certificate_id": subject["id"],
                        "serial_number": issued.serial_hex,
                        "not_after": issued.not_after.isoformat(),
                        "attempts": job["attempts"],
                    }
                ),
            },
        )


def _fail(ctx: TickContext, job: dict[str, Any], error: str) -> bool:
    guard = {"id": job["id"], "replica": ctx.replica_id, "attempts": job["attempts"]}
    with transaction(ctx) as cur:
        cur.execute(Q["fail"], {**guard, "error": error[:2000]})
        if cur.fetchone() is None:
            return False
        cur.execute(
            Q["audit"],
            {
                "actor": actor(ctx),
                "action": "job_failed",
                "job_id": job["id"],
                "details": Jsonb(
                    {
                        "type": job["type"],
                        "error": error[:500],
                        "attempts": job["attempts"],
                        "max_attempts": job["max_attempts"],
                    }
                ),
            },
        )
    return True


#: The work of a claimed job, by type: do it and complete the job under the claim guard (raise
#: ``JobError`` to fail it). Types not listed are failed by ``_run_one``. bench/jobs.py replaces
#: one entry with a no-op in its own process; nothing else changes this table.
Handler = Callable[[TickContext, dict[str, Any], LoopsSettings], None]
HANDLERS: dict[str, Handler] = {"Issuance": _issue, "Renewal": _issue}


def _stopping(ctx: TickContext) -> bool:
    try:
        ctx.check()
    except (TickCancelled, LeaseLost):
        return True
    return False


def _run_one(ctx: TickContext, job: dict[str, Any], settings: LoopsSettings) -> str:
    """Run one claimed job; returns the outcome counted in the tick's stats."""
    if _stopping(ctx):
        with transaction(ctx) as cur:
            cur.execute(
                Q["release"],
                {"id": job["id"], "replica": ctx.replica_id, "attempts": job["attempts"]},
            )
        return "released"
    try:
        handler = HANDLERS.get(job["type"])
        if handler is not None:
            handler(ctx, job, settings)
            return "completed"
        if job["type"] == "Validation":
            raise JobError("Validation jobs are not supported by leasectl's job processor")
        raise JobError(
            "Deployment job has no agent_id: leasectl does not deploy from the server; "
            "set agent_id so the target's agent claims it"
        )
    except _ClaimLost:
        ctx.log.warning("job %s is no longer claimed by this replica", job["id"])
        return "lost"
    except JobError as exc:
        return "failed" if _fail(ctx, job, str(exc)) else "lost"
    except Exception as exc:  # noqa: BLE001 - one bad job must not take the batch down
        ctx.log.exception("job %s failed unexpectedly", job["id"])
        return "failed" if _fail(ctx, job, f"{type(exc).__name__}: {exc}") else "lost"


def claim(ctx: TickContext, limit: int) -> list[dict[str, Any]]:
    """Claim up to ``limit`` due jobs for this replica (Running, attempts + 1)."""
    with transaction(ctx) as cur:
        cur.execute(Q["claim"], {"limit": limit, "replica": ctx.replica_id})
        jobs = list(cur.fetchall())
    if jobs:
        metrics.JOBS_CLAIMED.inc(len(jobs))
        ctx.count("claimed", len(jobs))
    return jobs


def process(ctx: TickContext, jobs: Sequence[dict[str, Any]], settings: LoopsSettings) -> None:
    """Run claimed jobs with bounded concurrency; outcomes go to ``ctx.stats``."""
    workers = max(1, min(settings.jobs.concurrency, len(jobs)))
    if workers == 1:
        outcomes = [_run_one(ctx, job, settings) for job in jobs]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=NAME) as pool:
            outcomes = list(pool.map(lambda job: _run_one(ctx, job, settings), jobs))
    for outcome in outcomes:
        ctx.count(outcome)


def run(ctx: TickContext) -> None:
    """One tick: claim a batch, process it, repeat while full batches keep coming."""
    settings: LoopsSettings = ctx.config
    while True:
        ctx.check()
        jobs = claim(ctx, settings.jobs.claim_batch)
        if not jobs:
            return
        process(ctx, jobs, settings)
        if len(jobs) < settings.jobs.claim_batch:
            return


def build(settings: LoopsSettings) -> LoopSpec | None:
    """The loop, or None when ``loops.jobs.processor.enabled`` is false."""
    return everywhere(
        NAME,
        settings.jobs.processor,
        run,
        timeout=TIMEOUT,
        run_on_start=True,
        description="claim due jobs with SKIP LOCKED and issue certificates via the local CA",
    )
