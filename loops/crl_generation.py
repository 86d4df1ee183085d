"""crl_generation: sign a fresh CRL for every issuer that holds a local CA key.

A tick, per issuer with ``ca_cert_pem`` and ``ca_key_pem``: read its revocations, bump
``issuers.crl_number`` (``UPDATE ... RETURNING`` with the fence), sign the CRL with
``cryptography`` (RFC 5280 reason codes, ``nextUpdate`` = now + ``loops.crl.next_update``),
upsert ``crl_cache`` and append a ``crl_generation_events`` row, all in one fenced
transaction. A failure rolls that issuer back (its number is not consumed) and records a
failed event; the other issuers continue.

Leased because two signers would race the counter and publish CRLs out of order. certctl used
``time.Now().Unix()`` as the CRL number, which goes backwards when a replica's clock is behind
(relying parties then keep the older CRL); here the number comes from one counter in the
database and a superseded holder cannot bump it, so it is strictly increasing across failovers.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from psycopg.rows import dict_row

from leasectl import sql
from leasectl.certs._common import schedule_of
from leasectl.certs.ca import CAError, load_issuer_ca
from leasectl.certs.settings import CaSettings, LoopsSettings
from leasectl.errors import ConfigError, FencingRejected, LeasectlError
from leasectl.loop import LoopSpec, TickContext

Q = sql.load("crl_generation", package="leasectl.certs.sql")
NEXT_CRL_NUMBER = Q["next_crl_number"]

#: RFC 5280 reason names (any case, ``_``/``-``/spaces ignored) → cryptography's flags.
REASONS: dict[str, x509.ReasonFlags] = {flag.value.lower(): flag for flag in x509.ReasonFlags}


class CrlError(LeasectlError):
    """This issuer's CRL cannot be built (bad serial, bad key); recorded as a failed event."""


def reason_flag(reason: str | None) -> x509.ReasonFlags | None:
    """The CRLReason to encode; None for unknown or ``unspecified`` (RFC 5280: omit it)."""
    key = "".join(ch for ch in (reason or "") if ch.isalnum()).lower()
    flag = REASONS.get(key)
    return None if flag is None or flag is x509.ReasonFlags.unspecified else flag


def parse_serial(text: str) -> int:
    """A hex serial as stored (``0a1b``, ``0A:1B``, ``0x0a1b``) → int; a CRL must not skip one."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "").replace(" ", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise CrlError(f"revoked serial {text!r} is not hex") from None
    if value <= 0:
        raise CrlError(f"revoked serial {text!r} is not a positive integer")
    return value


def build_crl(
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    entries: Sequence[tuple[str, str | None, dt.datetime]],
    *,
    number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
) -> x509.CertificateRevocationList:
    """Sign a CRL. Pure: no database, no clock."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())  # type: ignore[arg-type]
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(aki, critical=False)
    )
    for serial, reason, revoked_at in entries:
        entry = x509.RevokedCertificateBuilder().serial_number(parse_serial(serial))
        entry = entry.revocation_date(revoked_at)
        flag = reason_flag(reason)
        if flag is not None:
            entry = entry.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    algorithm = (
        None
        if isinstance(ca_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )
    return builder.sign(ca_key, algorithm)


class CrlGenerator:
    def __init__(self, next_update: float, keys: CaSettings | None = None) -> None:
        self.next_update = next_update
        self.keys = keys if keys is not None else CaSettings()

    def run(self, ctx: TickContext) -> None:
        if ctx.lease is None:
            raise LeasectlError(f"{ctx.loop} is a leased loop and was run without a lease")
        with ctx.pool.connection() as conn:
            issuers = conn.cursor(row_factory=dict_row).execute(Q["issuers_with_keys"]).fetchall()
            conn.commit()
        for issuer in issuers:
            ctx.check()
            self._one(ctx, issuer)

    def _one(self, ctx: TickContext, issuer: dict[str, Any]) -> None:
        assert ctx.lease is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        lease = ctx.lease
        started_at = dt.datetime.now(dt.UTC)
        t0 = time.monotonic()
        base = {**lease.fence_params(), "issuer_id": issuer["id"], "replica": ctx.replica_id}
        try:
            with ctx.transaction() as cur:
                number, count = self._generate(cur, issuer, base)
                duration_ms = int((time.monotonic() - t0) * 1000)
                cur.execute(
                    Q["record_event"],
                    base
                    | {
                        "crl_number": number,
                        "duration_ms": duration_ms,
                        "revoked_count": count,
                        "started_at": started_at,
                        "succeeded": True,
                        "error": None,
                    },
                )
        except (CrlError, CAError, ValueError, TypeError) as exc:
            # ValueError/TypeError: cryptography refusing the material (e.g. a bad date).
            self._record_failure(ctx, base, started_at, t0, exc)
            return
        ctx.count("generated")
        ctx.log.info(
            "CRL %d for issuer %s: %d revoked, %d ms",
            number,
            issuer["id"],
            count,
            duration_ms,
            extra={
                "action": "crl_generated",
                "issuer": issuer["id"],
                "crl_number": number,
                "epoch": lease.epoch,
            },
        )

    def _generate(
        self, cur: psycopg.Cursor[Any], issuer: dict[str, Any], base: dict[str, Any]
    ) -> tuple[int, int]:
        # The key is decrypted under loops.ca.kek; a refused key (plaintext, wrong KEK) is a
        # CAError: a failed event for this issuer, the others continue.
        ca_cert, ca_key = load_issuer_ca(issuer["ca_cert_pem"], issuer["ca_key_pem"], self.keys)
        entries = cur.execute(Q["revoked_entries"], base).fetchall()
        row = cur.execute(NEXT_CRL_NUMBER, base).fetchone()
        if row is None:
            # guard() above holds the lease row; no row here means the epoch moved on.
            raise FencingRejected(base["lease_name"], base["lease_epoch"], None)
        number = int(row[0])
        this_update = dt.datetime.now(dt.UTC).replace(microsecond=0)
        next_update = this_update + dt.timedelta(seconds=self.next_update)
        crl = build_crl(
            ca_cert,
            ca_key,
            entries,
            number=number,
            this_update=this_update,
            next_update=next_update,
        )
        cur.execute(
            Q["store_crl"],
            base
            | {
                "crl_der": crl.public_bytes(serialization.Encoding.DER),
                "crl_number": number,
                "this_update": this_update,
                "next_update": next_update,
                "duration_ms": None,
                "revoked_count": len(entries),
            },
        )
        return number, len(entries)

    def _record_failure(
        self,
        ctx: TickContext,
        base: dict[str, Any],
        started_at: dt.datetime,
        t0: float,
        exc: Exception,
    ) -> None:
        assert ctx.lease is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        ctx.count("failed")
        ctx.log.error(
            "CRL generation for issuer %s failed: %s",
            base["issuer_id"],
            exc,
            extra={"action": "crl_failed", "issuer": base["issuer_id"], "epoch": ctx.lease.epoch},
        )
        with ctx.transaction() as cur:
            cur.execute(
                Q["record_event"],
                base
                | {
                    "crl_number": None,
                    "duration_ms": int((time.monotonic() - t0) * 1000),
                    "revoked_count": None,
                    "started_at": started_at,
                    "succeeded": False,
                    "error": str(exc)[:2000],
                },
            )


def build(settings: LoopsSettings) -> LoopSpec | None:
    """The loop, or None when disabled."""
    crl = settings.crl
    if not crl.loop.enabled:
        return None
    if crl.next_update <= crl.loop.interval:
        raise ConfigError(
            f"loops.crl.next_update ({crl.next_update}s) must exceed loops.crl.loop.interval "
            f"({crl.loop.interval}s), or relying parties see an expired CRL between ticks"
        )
    return LoopSpec(
        name="crl_generation",
        **schedule_of(crl.loop),
        placement="leased",
        run=CrlGenerator(crl.next_update, settings.ca).run,
        timeout=300.0,
        # certctl's loop waited a full interval, but its CRL endpoint generated on a cache
        # miss, so a CRL existed from the first fetch. We do not serve CRLs, so with no ledger
        # history (a fresh database) the first holder signs at once. Afterwards the tick
        # ledger decides; a restart does not re-run a slot already done.
        run_on_start=True,
        description="sign a CRL per local-CA issuer; CRL number from a fenced counter",
    )
