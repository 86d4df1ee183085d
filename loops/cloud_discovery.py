"""cloud_discovery: find certificates in AWS (ACM, Secrets Manager) and record them.

A tick runs one source per (service, region): ACM ``list_certificates``/``get_certificate``
and Secrets Manager ``list_secrets`` (tag filter, name prefix) / ``get_secret_value``, with
the regions and optional ``endpoint_url`` from config and credentials from boto3's normal
chain. The AWS calls happen first, holding no database connection; then one fenced
transaction per source writes a ``discovery_scans`` row and upserts ``discovered_certificates``
on ``(fingerprint_sha256, agent_id, source_path)`` under the sentinel agent ``cloud-aws``. An
AWS error fails that source only (recorded in its scan row); the others continue. Only the
certificates are stored, never the rest of a secret (private keys stay in AWS).

Leased because the AWS calls are billed and rate-limited: certctl ran them on every replica
(and its Secrets Manager client was a stub that found nothing).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from cryptography import x509

from leasectl import sql
from leasectl.certs import discovered
from leasectl.certs._common import schedule_of, within_limit
from leasectl.certs.ca import CertificateInfo, describe
from leasectl.certs.settings import AwsSourceSettings, LoopsSettings
from leasectl.errors import LeasectlError
from leasectl.loop import LoopSpec, TickContext

if TYPE_CHECKING:
    from mypy_boto3_acm import ACMClient
    from mypy_boto3_acm.literals import KeyAlgorithmType
    from mypy_boto3_secretsmanager import SecretsManagerClient

Q = sql.load("cloud_discovery", package="leasectl.certs.sql")

AGENT_ID = "cloud-aws"
#: ListCertificates returns only RSA_1024/RSA_2048 certificates unless asked for the others.
ACM_KEY_TYPES: list[KeyAlgorithmType] = [
    "RSA_1024",
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "EC_prime256v1",
    "EC_secp384r1",
    "EC_secp521r1",
]
_PEM_CERT = re.compile(
    r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----", re.DOTALL
)
AWS_ERRORS = (BotoCoreError, ClientError)


def parse_certificates(data: str | bytes) -> list[x509.Certificate]:
    """Every certificate in a secret value: PEM blocks (also inside a JSON object), else DER
    (raw or base64). Anything else in the value (a private key) is ignored."""
    if isinstance(data, bytes):
        try:
            return [x509.load_der_x509_certificate(data)]
        except ValueError:
            data = data.decode("utf-8", "replace")
    text = data.strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            text = "\n".join(v for v in doc.values() if isinstance(v, str))
    blocks = _PEM_CERT.findall(text)
    if blocks:
        return [x509.load_pem_x509_certificate(b.encode("ascii")) for b in blocks]
    try:
        return [x509.load_der_x509_certificate(base64.b64decode(text, validate=True))]
    except (ValueError, binascii.Error):
        return []


#: Seconds an AWS call may wait for the cluster-wide ``aws`` rate limit before deferring.
_AWS_LIMIT_WAIT = 5.0


class _Throttled(Exception):
    """The ``aws`` rate limit deferred the rest of a source to the next tick."""


@dataclass
class SourceResult:
    """What one source found; ``failed`` when the source itself could not be listed."""

    source: str
    found: list[tuple[str, CertificateInfo]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: bool = False


class AwsDiscovery:
    def __init__(self, settings: AwsSourceSettings) -> None:
        self.settings = settings
        self.config = Config(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        )

    def sources(self) -> list[tuple[str, str]]:
        """``(service, region)`` pairs, in config order."""
        out: list[tuple[str, str]] = []
        for region in self.settings.regions:
            if self.settings.acm:
                out.append(("acm", region))
            if self.settings.secrets_manager:
                out.append(("sm", region))
        return out

    def _endpoint(self, region: str) -> str | None:
        return self.settings.region_endpoints.get(region) or self.settings.endpoint_url or None

    # -- the tick -----------------------------------------------------------------------------

    def run(self, ctx: TickContext) -> None:
        lease = ctx.lease
        if lease is None:
            raise LeasectlError(f"{ctx.loop} is a leased loop and was run without a lease")
        with ctx.transaction() as cur:
            cur.execute(Q["ensure_agent"], {"agent_id": AGENT_ID})
        # A boto3 Session is not thread-safe; one per tick keeps ticks independent.
        session = boto3.session.Session()
        for service, region in self.sources():
            ctx.check()
            started_at = dt.datetime.now(dt.UTC)
            t0 = time.monotonic()
            gate = self._gate(ctx, region)
            try:
                if service == "acm":
                    result = self._acm(session, region, gate)
                else:
                    result = self._secrets_manager(session, region, gate)
            except _Throttled as exc:
                # Deferred, not failed: the scan is an idempotent upsert, the next tick redoes it.
                ctx.count("throttled")
                ctx.log.info(
                    "%s %s: %s; the rest waits for the next tick",
                    service,
                    region,
                    exc,
                    extra={"action": "discovery_throttled", "region": region},
                )
                continue
            self._store(ctx, result, started_at, int((time.monotonic() - t0) * 1000))

    @staticmethod
    def _gate(ctx: TickContext, region: str) -> Callable[[], None]:
        """Called before every AWS API call: the tick's checks, then one event from the
        cluster-wide ``aws`` rate limit for this region (waiting up to a few seconds)."""

        def gate() -> None:
            ctx.check()
            if not within_limit(ctx, "aws", region, wait=_AWS_LIMIT_WAIT):  # fail closed
                raise _Throttled("cluster-wide aws rate limit reached (or not checkable)")

        return gate

    def _acm(
        self, session: boto3.session.Session, region: str, check: Callable[[], None]
    ) -> SourceResult:
        result = SourceResult(f"aws-acm://{region}")
        try:
            client: ACMClient = session.client(
                "acm", region_name=region, endpoint_url=self._endpoint(region), config=self.config
            )
            pages = client.get_paginator("list_certificates").paginate(
                Includes={"keyTypes": ACM_KEY_TYPES}
            )
            for page in pages:
                for summary in page["CertificateSummaryList"]:
                    check()  # a lost lease stops the (billed) calls, not only the writes
                    arn = summary["CertificateArn"]
                    path = f"{result.source}/{arn.rsplit('/', 1)[-1]}"
                    try:
                        pem = client.get_certificate(CertificateArn=arn)["Certificate"]
                        certs = parse_certificates(pem)[:1]  # the leaf; the chain is separate
                    except (*AWS_ERRORS, ValueError) as exc:
                        # e.g. a certificate still pending validation has no body yet
                        result.errors.append(f"{path}: {exc}")
                        continue
                    result.found += [(path, describe(c)) for c in certs]
        except AWS_ERRORS as exc:
            result.failed = True
            result.errors.append(f"{result.source}: {exc}")
        return result

    def _secrets_manager(
        self, session: boto3.session.Session, region: str, check: Callable[[], None]
    ) -> SourceResult:
        s = self.settings
        result = SourceResult(f"aws-sm://{region}")
        filters: list[Any] = []
        if s.tag_key:
            filters.append({"Key": "tag-key", "Values": [s.tag_key]})
        if s.name_prefix:
            filters.append({"Key": "name", "Values": [s.name_prefix]})
        try:
            client: SecretsManagerClient = session.client(
                "secretsmanager",
                region_name=region,
                endpoint_url=self._endpoint(region),
                config=self.config,
            )
            for page in client.get_paginator("list_secrets").paginate(Filters=filters):
                for secret in page["SecretList"]:
                    check()
                    name = secret.get("Name", "")
                    tags = {t.get("Key"): t.get("Value") for t in secret.get("Tags", [])}
                    # The API filter matches the tag key; the value and prefix are checked here.
                    if s.tag_key and s.tag_value and tags.get(s.tag_key) != s.tag_value:
                        continue
                    if s.name_prefix and not name.startswith(s.name_prefix):
                        continue
                    path = f"{result.source}/{name}"
                    try:
                        value = client.get_secret_value(SecretId=secret["ARN"])
                        data = value.get("SecretString") or value.get("SecretBinary") or b""
                        certs = parse_certificates(data)
                    except (*AWS_ERRORS, ValueError) as exc:
                        result.errors.append(f"{path}: {exc}")
                        continue
                    if not certs:
                        result.errors.append(f"{path}: no certificate in the secret value")
                    result.found += [(path, describe(c)) for c in certs]
        except AWS_ERRORS as exc:
            result.failed = True
            result.errors.append(f"{result.source}: {exc}")
        return result

    def _store(
        self, ctx: TickContext, result: SourceResult, started_at: dt.datetime, duration_ms: int
    ) -> None:
        assert ctx.lease is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        base = {**ctx.lease.fence_params(), "agent_id": AGENT_ID, "replica": ctx.replica_id}
        new = 0
        with ctx.transaction() as cur:
            row = cur.execute(
                Q["start_scan"],
                base
                | {
                    "source": result.source,
                    "directories": [result.source],
                    "started_at": started_at,
                },
            ).fetchone()
            assert row is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
            scan_id = row[0]
            for path, info in result.found:
                inserted = cur.execute(
                    discovered.UPSERT,
                    discovered.upsert_params(
                        info,
                        source_path=path,
                        source_format="pem",
                        agent_id=AGENT_ID,
                        scan_id=scan_id,
                    ),
                ).fetchone()
                new += 1 if inserted and inserted[0] else 0
            cur.execute(
                Q["finish_scan"],
                {
                    "scan_id": scan_id,
                    "found": len(result.found),
                    "new": new,
                    "errors_count": len(result.errors),
                    "errors": [e[:1000] for e in result.errors],
                    "duration_ms": duration_ms,
                },
            )
        ctx.count("found", len(result.found))
        ctx.count("new", new)
        if result.failed:
            ctx.count("sources_failed")
            ctx.log.warning(
                "cloud discovery source %s failed: %s",
                result.source,
                "; ".join(result.errors),
                extra={"action": "discovery_source_failed", "source": result.source},
            )


def build(settings: LoopsSettings) -> LoopSpec | None:
    """The loop, or None when disabled (or no source is switched on)."""
    cd = settings.cloud_discovery
    if not cd.loop.enabled or not cd.aws.regions or not (cd.aws.acm or cd.aws.secrets_manager):
        return None
    return LoopSpec(
        name="cloud_discovery",
        **schedule_of(cd.loop),
        placement="leased",
        run=AwsDiscovery(cd.aws).run,
        timeout=1800.0,
        run_on_start=True,
        description="discover certificates in AWS ACM and Secrets Manager",
    )
