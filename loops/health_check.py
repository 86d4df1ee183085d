"""health_check: TLS-probe due endpoints and move each through a fixed state machine.

One tick claims due checks (``last_checked_at`` older than ``check_interval_seconds``) in
batches, probes them with a TLS handshake (``health_check.timeout``, at most
``health_check.concurrency`` at once), and per check, in one transaction, writes the result,
one ``endpoint_health_history`` row and, on a status change, a
``health_check_status_transition`` audit row. The tick ends by deleting history older than
``health_check.history_retention_days``.

State machine (:func:`next_status`): a success resets ``consecutive_failures`` and is
``cert_mismatch`` when ``expected_fingerprint`` is set and differs from the served leaf's
SHA-256, else ``healthy``. A failure increments ``consecutive_failures`` once (certctl counted
it twice, so the first failure already reached ``degraded``: defect #13); at
``down_threshold`` it is ``down``, at ``degraded_threshold`` ``degraded``, and below that an
``unknown`` or ``healthy`` endpoint is ``healthy`` while any other status stays as it is.

Why ``everywhere`` is safe: the claim stamps ``last_checked_at`` under ``FOR UPDATE SKIP
LOCKED``, so only one replica probes a given check per interval, and the result write is
guarded by that stamp; a result from a claim that was superseded is dropped, not applied on
top of another replica's count.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from psycopg.types.json import Jsonb

from leasectl.certs import ca
from leasectl.certs._common import actor, everywhere, transaction
from leasectl.certs.settings import LoopsSettings
from leasectl.certs.tls_probe import ProbeResult, parse_endpoint, probe
from leasectl.loop import LoopSpec, TickContext
from leasectl.sql import load

Q = load("health_check", package="leasectl.certs.sql")

NAME = "health_check"
TIMEOUT = 300.0  # certctl: 5 minutes


def next_status(
    current: str,
    *,
    ok: bool,
    failures_before: int,
    fingerprint: str | None = None,
    expected_fingerprint: str | None = None,
    degraded_threshold: int = 2,
    down_threshold: int = 5,
) -> tuple[str, int]:
    """``(new status, consecutive_failures)`` after one probe; pure, so it is unit-tested."""
    if ok:
        if expected_fingerprint and (
            fingerprint is None
            or ca.normalize_fingerprint(expected_fingerprint)
            != ca.normalize_fingerprint(fingerprint)
        ):
            return "cert_mismatch", 0
        return "healthy", 0
    failures = failures_before + 1
    if failures >= down_threshold:
        return "down", failures
    if failures >= degraded_threshold:
        return "degraded", failures
    if current in ("unknown", "healthy"):
        return "healthy", failures
    return current, failures


def _probe(endpoint: str, timeout: float) -> ProbeResult:
    try:
        host, port = parse_endpoint(endpoint)
    except ValueError as exc:
        return ProbeResult(endpoint, 0, ok=False, error=str(exc))
    return probe(host, port, timeout)


def _record(ctx: TickContext, check: dict[str, Any], result: ProbeResult) -> str:
    """Write one probe's outcome under the claim guard; returns what happened."""
    info: ca.CertificateInfo | None = None
    error = result.error
    if result.ok and result.der is not None:
        try:
            info = ca.describe(result.der)
        except ValueError as exc:
            error = f"certificate does not parse: {exc}"
    ok = info is not None
    status, failures = next_status(
        check["status"],
        ok=ok,
        failures_before=check["consecutive_failures"],
        fingerprint=info.fingerprint_sha256 if info else None,
        expected_fingerprint=check["expected_fingerprint"],
        degraded_threshold=check["degraded_threshold"],
        down_threshold=check["down_threshold"],
    )
    base = {"id": check["id"], "token": check["last_checked_at"], "status": status}
    with transaction(ctx) as cur:
        if info is not None:
            cur.execute(
                Q["record_success"],
                {
                    **base,
                    "fingerprint": info.fingerprint_sha256,
                    "response_time_ms": result.elapsed_ms,
                    "tls_version": result.tls_version,
                    "cipher": result.cipher,
                    "subject": info.subject_dn,
                    "issuer": info.issuer_dn,
                    "expiry": info.not_after,
                },
            )
        else:
            cur.execute(
                Q["record_failure"],
                {
                    **base,
                    "failures": failures,
                    "response_time_ms": result.elapsed_ms,
                    "reason": (error or "probe failed")[:1000],
                },
            )
        if cur.fetchone() is None:
            return "superseded"
        cur.execute(
            Q["insert_history"],
            {
                "id": check["id"],
                "status": status,
                "response_time_ms": result.elapsed_ms,
                "fingerprint": info.fingerprint_sha256 if info else None,
                "reason": None if ok else (error or "probe failed")[:1000],
            },
        )
        if status != check["status"]:
            cur.execute(
                Q["audit_transition"],
                {
                    "actor": actor(ctx),
                    "id": check["id"],
                    "details": Jsonb(
                        {
                            "endpoint": check["endpoint"],
                            "from": check["status"],
                            "to": status,
                            "consecutive_failures": failures,
                        }
                    ),
                },
            )
            return "transitioned"
    return "checked"


def run(ctx: TickContext) -> None:
    """One tick: claim due checks in batches, probe, record; then prune old history."""
    settings: LoopsSettings = ctx.config
    hc = settings.health_check
    while True:
        ctx.check()
        with transaction(ctx) as cur:
            cur.execute(Q["claim_due"], {"limit": hc.claim_batch})
            checks = list(cur.fetchall())
        if not checks:
            break
        workers = max(1, min(hc.concurrency, len(checks)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=NAME) as pool:
            results = list(pool.map(lambda c: _probe(c["endpoint"], hc.timeout), checks))
        for check, result in zip(checks, results, strict=True):
            ctx.count(_record(ctx, check, result))
            ctx.count("ok" if result.ok else "failed")
        if len(checks) < hc.claim_batch:
            break
    with transaction(ctx) as cur:
        cur.execute(Q["prune_history"], {"days": hc.history_retention_days})
        ctx.count("history_pruned", cur.rowcount)


def build(settings: LoopsSettings) -> LoopSpec | None:
    """The loop, or None when ``loops.health_check.loop.enabled`` is false."""
    return everywhere(
        NAME,
        settings.health_check.loop,
        run,
        timeout=TIMEOUT,
        run_on_start=False,
        description="TLS health checks of endpoints with a fixed state machine",
    )
