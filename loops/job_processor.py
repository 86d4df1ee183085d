"""job_processor: claim due Pending jobs and run them; Issuance/Renewal sign through the local CA.

A tick claims up to ``jobs.claim_batch`` jobs in a single ``UPDATE ... FROM (SELECT ... FOR
UPDATE SKIP LOCKED LIMIT n)`` statement that sets them Running, stamps ``started_at``,
increments ``attempts`` and records ``claimed_by``; then it runs them on ``jobs.concurrency``
threads:

- Issuance / Renewal: issue a real X.509 certificate with the issuer's local CA (created on
  first use); the job's completion stores the version (unique per job) and makes the
  certificate Active with its new ``expires_at``, in the statement that completes the job.
- Validation: failed with a clear error (leasectl has no validation step).
- Deployment without an agent: failed with a clear error. Deployment jobs routed to an agent are
  never claimed: they belong to the agent's own claim (certctl defect #3).

Pipelined and batched, because a job's own round trips and commit were its cost (issue 11):
while batch n runs on the workers, the tick's thread already claims batch n+1, so the workers
never wait for a claim; and finished jobs are not committed one by one but buffered and
completed together by one guarded statement (``complete_batch``: the jobs, their audit rows
and their certificate versions, atomically), flushed when ``jobs.complete_batch``
are waiting, when the oldest has waited ``jobs.complete_flush_interval``, and when the tick
ends or is stopped. A failed job (its handler raised) is failed at once, one by one, as before.

Why ``everywhere`` is safe: SKIP LOCKED hands every job to exactly one claimer, and every
later write is guarded per job by ``status = 'Running' AND claimed_by = me AND attempts =
<claimed attempt>``. If job_timeout reaped the job meanwhile, or it was re-claimed after a
retry (by another replica, or by this replica id after a restart: only the attempt tells those
apart), the guard matches nothing, that job is counted ``lost`` and its certificate is not
stored, so a job is never completed twice. A replica that crashes mid-job, or with completions
still in its buffer, leaves those jobs Running in the database; job_timeout fails them after
``jobs.running_timeout`` and job_retry puts them back, so no job is lost (its signed
certificate, never stored, is simply signed again). Jobs a tick of this replica id left
Running (its work connection was killed after the claim committed, so it never learnt of
them or could not complete or hand them back) are not left for that hour: the next tick's
first claim takes them again under a new attempt, since ticks never overlap on a replica.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from leasectl.certs import ca, ca_keys, metrics
from leasectl.certs._common import actor, everywhere, transaction
from leasectl.certs.settings import CaSettings, LoopsSettings
from leasectl.errors import LeaseLost, TickCancelled
from leasectl.loop import LoopSpec, TickContext
from leasectl.sql import load

Q = load("job_processor", package="leasectl.certs.sql")

NAME = "job_processor"
TIMEOUT = 120.0  # certctl: 2 minutes per run


class JobError(Exception):
    """The job cannot succeed as it stands; it is failed with this message as ``last_error``."""


@dataclass(frozen=True)
class Version:
    """The certificate version an Issuance/Renewal job stores when its completion commits."""

    certificate_id: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint: str
    pem_chain: str
    key_algorithm: str | None
    key_size: int | None


@dataclass(frozen=True)
class Completion:
    """A claimed job whose work is done, waiting for its batched, guarded commit.

    ``details`` is its ``job_completed`` audit row's details; ``version`` the certificate it
    stores (None for a job that stores nothing). Both are written only if the job's guard still
    matches, by the statement that completes it.
    """

    job: dict[str, Any]
    details: dict[str, Any]
    version: Version | None = None


@functools.lru_cache(maxsize=64)
def _issuer_ca(
    cert_pem: str, key_pem: str, keys: CaSettings
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    # Parsing (and decrypting) a key per job would be wasted work at thousands of jobs a minute.
    return ca.load_issuer_ca(cert_pem, key_pem, keys)


def ensure_issuer_ca(
    ctx: TickContext, issuer_id: str, issuer_name: str, keys: CaSettings
) -> tuple[str, str]:
    """The issuer's CA PEMs, creating them once if the local issuer has none yet.

    Two replicas may create a CA at the same moment; the guarded UPDATE keeps the first and
    both then read the stored one, so every certificate of an issuer chains to one CA.
    """
    cert_pem, key_pem = ca.create_ca(f"{issuer_name} (leasectl local CA)")
    try:
        key_pem = ca_keys.stored_form(key_pem, keys)  # encrypted under loops.ca.kek
    except ca_keys.CaKeyError as exc:
        raise JobError(f"issuer {issuer_id}: {exc}") from None
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


def _issue(ctx: TickContext, job: dict[str, Any], settings: LoopsSettings) -> Completion:
    if job["certificate_id"] is None:
        raise JobError(f"{job['type']} job has no certificate_id")
    if "subject" not in job:  # claim() attaches it; a job from elsewhere looks it up here
        with _statement(ctx) as cur:
            _attach_subjects(cur, [job])
    subject = job["subject"]
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
        cert_pem, key_pem = ensure_issuer_ca(
            ctx, subject["issuer_id"], subject["issuer_name"], settings.ca
        )
    try:
        ca_cert, ca_key = _issuer_ca(cert_pem, key_pem, settings.ca)
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
    return Completion(
        job,
        {
            "type": job["type"],
            "certificate_id": subject["id"],
            "serial_number": issued.serial_hex,
            "not_after": issued.not_after.isoformat(),
            "attempts": job["attempts"],
        },
        Version(
            certificate_id=subject["id"],
            serial=issued.serial_hex,
            not_before=issued.not_before,
            not_after=issued.not_after,
            fingerprint=issued.fingerprint_sha256,
            pem_chain=issued.chain_pem,
            key_algorithm=issued.key_algorithm,
            key_size=issued.key_size,
        ),
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


#: The work of a claimed job, by type: do it and return its :class:`Completion`, which is then
#: committed under the claim guard with the next batch (raise ``JobError`` to fail the job).
#: Types not listed are failed by ``_run_one``. bench/jobs.py replaces one entry with a no-op in
#: its own process; nothing else changes this table.
Handler = Callable[[TickContext, dict[str, Any], LoopsSettings], Completion]
HANDLERS: dict[str, Handler] = {"Issuance": _issue, "Renewal": _issue}
ISSUING = ("Issuance", "Renewal")  # the types whose claim reads their subject (_issue's input)


def _stopping(ctx: TickContext) -> bool:
    try:
        ctx.check()
    except (TickCancelled, LeaseLost):
        return True
    return False


def _count(ctx: TickContext, **outcomes: int) -> None:
    for outcome, n in outcomes.items():
        if n:
            ctx.count(outcome, n)


def _guard_arrays(ctx: TickContext, jobs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ids": [job["id"] for job in jobs],
        "attempts": [job["attempts"] for job in jobs],
        "replica": ctx.replica_id,
    }


def release(ctx: TickContext, jobs: Sequence[dict[str, Any]]) -> int:
    """Hand claimed, unstarted jobs back (Pending, attempt not counted); returns how many."""
    if not jobs:
        return 0
    with _statement(ctx) as cur:
        cur.execute(Q["release"], _guard_arrays(ctx, jobs))
        return cur.rowcount


@contextmanager
def _statement(ctx: TickContext) -> Iterator[psycopg.Cursor[DictRow]]:
    """A dict-row cursor for ONE statement, in autocommit: atomic by itself.

    Why not :func:`loops._common.transaction`: BEGIN, the statement and COMMIT are three round
    trips, this is one; the claim and the completion flush are single statements, and at
    thousands of jobs a second those round trips were a good part of what a job cost.
    """
    with ctx.pool.connection() as conn:
        conn.autocommit = True
        try:
            with conn.cursor(row_factory=dict_row) as cur:
                yield cur
        finally:
            if not conn.broken:
                conn.autocommit = False  # the pool's other users expect transactions


def _version_row(job_id: str, v: Version) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "certificate_id": v.certificate_id,
        "serial": v.serial,
        "not_before": v.not_before.isoformat(),
        "not_after": v.not_after.isoformat(),
        "fingerprint": v.fingerprint,
        "pem_chain": v.pem_chain,
        "key_algorithm": v.key_algorithm,
        "key_size": v.key_size,
    }


def commit_completions(ctx: TickContext, batch: Sequence[Completion]) -> set[str]:
    """Complete ``batch`` in one statement under each job's claim guard; the ids completed.

    A job missing from the result is no longer ours (reaped, or re-claimed at a later attempt):
    nothing of it was written, neither its audit row nor its certificate version.
    """
    params = {
        **_guard_arrays(ctx, [c.job for c in batch]),
        "actor": actor(ctx),
        "details": Jsonb({c.job["id"]: c.details for c in batch}),
        "versions": Jsonb(
            [_version_row(c.job["id"], c.version) for c in batch if c.version is not None]
        ),
    }
    with _statement(ctx) as cur:
        cur.execute(Q["complete_batch"], params)
        return {row["id"] for row in cur.fetchall()}


class _Completions:
    """Finished jobs buffered for :func:`commit_completions`, flushed by size or age.

    The worker that fills the buffer to ``size`` flushes it; the tick's thread flushes what has
    waited ``interval`` (:meth:`due_in` tells it when) and everything at the end. Until a flush
    commits, its jobs are Running and claimed by us in the database, so losing the buffer in a
    crash loses no job. Outcomes are counted here under the lock (flushes run on several
    threads) and handed to the tick's stats by the tick's thread.
    """

    def __init__(self, ctx: TickContext, size: int, interval: float) -> None:
        self._ctx = ctx
        self._size = max(1, size)
        self._interval = max(0.001, interval)
        self._lock = threading.Lock()
        self._buffer: list[Completion] = []
        self._oldest = 0.0
        self.counts: Counter[str] = Counter()

    def add(self, completion: Completion) -> None:
        with self._lock:
            if not self._buffer:
                self._oldest = self._ctx.clock()
            self._buffer.append(completion)
            full = len(self._buffer) >= self._size
            batch = self._take() if full else []
        self._commit(batch)

    def due_in(self) -> float:
        """Seconds until the buffer must be flushed (``interval`` while it is empty)."""
        with self._lock:
            if not self._buffer:
                return self._interval
            return max(0.0, self._oldest + self._interval - self._ctx.clock())

    def flush(self, *, only_due: bool = False) -> None:
        with self._lock:
            due = self._buffer and self._ctx.clock() >= self._oldest + self._interval
            batch = self._take() if due or not only_due else []
        self._commit(batch)

    def _take(self) -> list[Completion]:
        batch, self._buffer = self._buffer, []
        return batch

    def _commit(self, batch: list[Completion]) -> None:
        if not batch:
            return
        try:
            done = commit_completions(self._ctx, batch)
        except Exception:
            if len(batch) == 1:
                raise
            # One bad row (a constraint) must not fail the others: commit them one by one.
            self._ctx.log.exception("batched completion failed; completing one by one")
            for completion in batch:
                self._commit_one(completion)
            return
        lost = [c.job["id"] for c in batch if c.job["id"] not in done]
        for job_id in lost:
            self._ctx.log.warning("job %s is no longer claimed by this replica", job_id)
        with self._lock:
            self.counts["completed"] += len(done)
            self.counts["lost"] += len(lost)

    def _commit_one(self, completion: Completion) -> None:
        try:
            self._commit([completion])
        except Exception as exc:  # noqa: BLE001 - failed like a job whose handler raised
            ok = _fail(self._ctx, completion.job, f"{type(exc).__name__}: {exc}")
            with self._lock:
                self.counts["failed" if ok else "lost"] += 1


def _run_one(
    ctx: TickContext, job: dict[str, Any], settings: LoopsSettings, done: _Completions
) -> str:
    """Run one claimed job; returns its outcome, ``done`` once its completion is buffered."""
    if _stopping(ctx):
        return "released" if release(ctx, [job]) else "lost"
    try:
        handler = HANDLERS.get(job["type"])
        if handler is not None:
            completion = handler(ctx, job, settings)
        elif job["type"] == "Validation":
            raise JobError("Validation jobs are not supported by leasectl's job processor")
        else:
            raise JobError(
                "Deployment job has no agent_id: leasectl does not deploy from the server; "
                "set agent_id so the target's agent claims it"
            )
    except JobError as exc:
        return "failed" if _fail(ctx, job, str(exc)) else "lost"
    except Exception as exc:  # noqa: BLE001 - one bad job must not take the batch down
        ctx.log.exception("job %s failed unexpectedly", job["id"])
        return "failed" if _fail(ctx, job, f"{type(exc).__name__}: {exc}") else "lost"
    done.add(completion)  # outside the try: a failed flush is the tick's error, not this job's
    return "done"


class _Runner:
    """The workers and the completion buffer of one tick; leaving it flushes every completion."""

    def __init__(self, ctx: TickContext, settings: LoopsSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        jobs = settings.jobs
        self.done = _Completions(ctx, jobs.complete_batch, jobs.complete_flush_interval)
        self._workers = max(1, jobs.concurrency)
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix=NAME)
        self._outstanding: set[Future[Counter[str]]] = set()

    def start(self, jobs: Sequence[dict[str, Any]]) -> list[Future[Counter[str]]]:
        """Start the workers on a batch; returns their futures (outcome counts).

        Each worker takes the batch's next job until none is left: a few futures per batch
        instead of one per job, which at thousands of no-op jobs a second mattered.
        """
        queue = deque(jobs)
        futures = [
            self._pool.submit(self._drain, queue) for _ in range(min(self._workers, len(jobs)))
        ]
        self._outstanding.update(futures)
        return futures

    def _drain(self, queue: deque[dict[str, Any]]) -> Counter[str]:
        outcomes: Counter[str] = Counter()
        while True:
            try:
                job = queue.popleft()  # atomic: each job goes to one worker
            except IndexError:
                return outcomes
            outcomes[_run_one(self.ctx, job, self.settings, self.done)] += 1

    def finish(self, futures: Sequence[Future[Counter[str]]]) -> None:
        """Wait for ``futures``, flushing completions that come due meanwhile; count outcomes."""
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=self.done.due_in())
            self.done.flush(only_due=True)
        self._outstanding.difference_update(futures)
        for future in futures:
            outcomes = future.result()  # a worker's error (a failed flush) fails the tick
            outcomes.pop("done", None)  # counted as completed or lost when flushed
            _count(self.ctx, **outcomes)

    def __enter__(self) -> _Runner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            try:
                self.finish(list(self._outstanding))
            finally:
                self._pool.shutdown(wait=True)
                self.done.flush()  # on stop, on error, at the end: what is done is kept
        finally:
            _count(self.ctx, **self.done.counts)


def _attach_subjects(cur: psycopg.Cursor[DictRow], jobs: Sequence[dict[str, Any]]) -> None:
    """Give each Issuance/Renewal job its ``subject`` row (None if the certificate is gone)."""
    issuing = [j for j in jobs if j["type"] in ISSUING and j["certificate_id"] is not None]
    if not issuing:
        return
    cur.execute(Q["job_subjects"], {"certificate_ids": [j["certificate_id"] for j in issuing]})
    subjects = {row["id"]: row for row in cur.fetchall()}
    for job in issuing:
        job["subject"] = subjects.get(job["certificate_id"])


def claim(ctx: TickContext, limit: int, *, adopt: bool = False) -> list[dict[str, Any]]:
    """Claim up to ``limit`` due jobs for this replica (Running, attempts + 1).

    ``adopt`` (a tick's first claim): first the jobs this replica id left Running, which at
    that moment can only be an ended tick's (see the ``claim`` query). The jobs that issue
    come with their ``subject`` (certificate, issuer CA, profile), read for the whole batch
    right after the claim.
    """
    with _statement(ctx) as cur:
        cur.execute(Q["claim"], {"limit": limit, "replica": ctx.replica_id, "adopt": adopt})
        jobs = list(cur.fetchall())
        _attach_subjects(cur, jobs)
    if jobs:
        metrics.JOBS_CLAIMED.inc(len(jobs))
        ctx.count("claimed", len(jobs))
    return jobs


def process(ctx: TickContext, jobs: Sequence[dict[str, Any]], settings: LoopsSettings) -> None:
    """Run claimed jobs on the workers and complete them in batches; outcomes in ``ctx.stats``."""
    with _Runner(ctx, settings) as runner:
        runner.finish(runner.start(jobs))


def run(ctx: TickContext) -> None:
    """One tick: claim and run batches while full batches keep coming, one claim ahead."""
    settings: LoopsSettings = ctx.config
    limit = settings.jobs.claim_batch
    stopped = False
    with _Runner(ctx, settings) as runner:
        ctx.check()
        batch = claim(ctx, limit, adopt=True)
        while batch:
            if _stopping(ctx):  # a claimed batch nobody started goes back in one statement
                released = release(ctx, batch)
                _count(ctx, released=released, lost=len(batch) - released)
                stopped = True
                break
            running = runner.start(batch)
            following: list[dict[str, Any]] = []
            if len(batch) == limit:
                # Pipelined: claim batch n+1 now, while the workers run batch n.
                stopped = _stopping(ctx)
                following = [] if stopped else claim(ctx, limit)
            runner.finish(running)
            batch = following
    if stopped:
        ctx.check()  # raises: the tick was cut short (its unstarted jobs were released)


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
