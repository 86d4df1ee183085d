"""network_scan: TLS-handshake every address × port of due scan targets and record what answers.

One tick claims due targets one at a time — a target is due when it was never scanned or its
``scan_interval_hours`` have passed (certctl ignored that column: defect #12) — and for each:
expands its CIDRs (at most ``network_scan.max_hosts_per_target`` addresses, a /20; network,
broadcast, multicast and reserved addresses dropped) × its ports, runs real TLS handshakes with
``ssl`` (no verification, ``timeout_ms`` each) on at most ``network_scan.concurrency`` threads,
parses each peer certificate with ``cryptography``, and in one transaction writes one
``discovery_scans`` row, upserts ``discovered_certificates`` on
``(fingerprint_sha256, agent_id, source_path)`` under the ``server-scanner`` sentinel agent, and
stamps the target's ``last_scan_*`` columns.

Why ``everywhere`` is safe: a target is claimed with ``FOR UPDATE SKIP LOCKED`` by writing a
claim (``scan_claimed_by``/``scan_claimed_until``) into its row, so two replicas never scan the
same target at once and the scan interval holds cluster-wide; no transaction stays open across
the probes, and a crashed scanner's claim expires after ``network_scan.claim_ttl`` (one this
replica id still holds, left by an earlier tick that could not hand it back, is taken again at
once: ticks never overlap on a replica and a tick holds one target at a time). Storage is an
upsert on the natural key, so even a scan finishing after its claim expired stores nothing twice.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from psycopg.types.json import Jsonb

from leasectl.certs import ca, discovered
from leasectl.certs._common import actor, everywhere, transaction
from leasectl.certs.settings import LoopsSettings
from leasectl.certs.tls_probe import ProbeResult, format_endpoint, probe
from leasectl.loop import LoopSpec, TickContext
from leasectl.sql import load

Q = load("network_scan", package="leasectl.certs.sql")

NAME = "network_scan"
TIMEOUT = 1800.0  # certctl: 30 minutes
SENTINEL_AGENT = "server-scanner"


def expand(
    cidrs: Iterable[str], ports: Iterable[int], max_hosts: int
) -> tuple[list[tuple[str, int]], list[str]]:
    """``(host, port)`` pairs to probe, and the problems found (bad or oversized CIDRs, ports).

    A CIDR larger than ``max_hosts`` addresses is refused whole rather than truncated, so an
    operator sees the mistake instead of a silently partial scan.
    """
    errors: list[str] = []
    hosts: dict[str, None] = {}
    for cidr in cidrs:
        try:
            net = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError as exc:
            errors.append(f"invalid CIDR {cidr!r}: {exc}")
            continue
        if net.num_addresses > max_hosts:
            errors.append(
                f"CIDR {cidr} has {net.num_addresses} addresses; at most {max_hosts} per target"
            )
            continue
        addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = (
            list(net.hosts())
            if net.version == 4 and net.prefixlen < 31
            else list(net)  # /31, /32 and IPv6: every address
        )
        for address in addresses:
            if address.is_multicast or address.is_unspecified or address.is_reserved:
                continue
            hosts[str(address)] = None
            if len(hosts) >= max_hosts:
                break
        if len(hosts) >= max_hosts:
            errors.append(f"target capped at {max_hosts} addresses")
            break
    valid_ports: list[int] = []
    for port in ports:
        if 0 < int(port) < 65536:
            valid_ports.append(int(port))
        else:
            errors.append(f"port {port} outside 1-65535")
    return [(h, p) for h in hosts for p in dict.fromkeys(valid_ports)], errors


def ensure_sentinel_agent(ctx: TickContext) -> None:
    """Create the ``server-scanner`` agent row discovered certificates reference, if missing."""
    with transaction(ctx) as cur:
        cur.execute(Q["ensure_sentinel_agent"], {"agent_id": SENTINEL_AGENT})


def _probe_all(
    ctx: TickContext, pairs: list[tuple[str, int]], timeout: float, concurrency: int
) -> list[ProbeResult]:
    if not pairs:
        return []
    results: list[ProbeResult] = []
    with ThreadPoolExecutor(
        max_workers=max(1, min(concurrency, len(pairs))), thread_name_prefix=NAME
    ) as pool:
        pending = {pool.submit(probe, host, port, timeout) for host, port in pairs}
        try:
            while pending:
                ctx.check()  # a stopping tick abandons the rest of the target
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                results.extend(f.result() for f in done)
        finally:
            for future in pending:
                future.cancel()
    return results


def _store(
    ctx: TickContext,
    target: dict[str, Any],
    results: list[ProbeResult],
    errors: list[str],
    started_at: dt.datetime,
    duration_ms: int,
) -> tuple[int, int]:
    seen: list[tuple[ProbeResult, ca.CertificateInfo]] = []
    for result in results:
        if not result.ok or result.der is None:
            continue
        try:
            seen.append((result, ca.describe(result.der)))
        except ValueError as exc:
            errors.append(f"{result.endpoint}: certificate does not parse: {exc}")
    found = new = 0
    with transaction(ctx) as cur:
        cur.execute(
            Q["insert_scan"],
            {
                "agent_id": SENTINEL_AGENT,
                "source": f"network-scan:{target['id']}",
                "directories": list(target["cidrs"]),
                "errors_count": len(errors),
                "errors": errors[:100],
                "duration_ms": duration_ms,
                "started_at": started_at,
            },
        )
        scan = cur.fetchone()
        assert scan is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        for result, info in seen:
            cur.execute(
                discovered.UPSERT,
                discovered.upsert_params(
                    info,
                    source_path=format_endpoint(result.host, result.port),
                    source_format="pem",
                    agent_id=SENTINEL_AGENT,
                    scan_id=scan["id"],
                ),
            )
            row = cur.fetchone()
            found += 1
            new += 1 if row is not None and row["inserted"] else 0
        cur.execute(Q["finish_scan"], {"scan_id": scan["id"], "found": found, "new": new})
        cur.execute(
            Q["finish_target"],
            {
                "id": target["id"],
                "replica": ctx.replica_id,
                "token": target["scan_claimed_until"],
                "duration_ms": duration_ms,
                "found": found,
            },
        )
        if cur.fetchone() is None:
            ctx.log.warning("scan target %s: claim expired before the scan finished", target["id"])
            ctx.count("claims_lost")
        cur.execute(
            Q["audit"],
            {
                "actor": actor(ctx),
                "id": target["id"],
                "details": Jsonb(
                    {
                        "scan_id": scan["id"],
                        "endpoints_probed": len(results),
                        "certificates_found": found,
                        "certificates_new": new,
                        "errors": len(errors),
                        "duration_ms": duration_ms,
                    }
                ),
            },
        )
    return found, new


def scan_target(ctx: TickContext, target: dict[str, Any], settings: LoopsSettings) -> None:
    """Probe one claimed target and store the result; the claim is released on failure."""
    started_at = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    try:
        pairs, errors = expand(
            target["cidrs"], target["ports"], settings.network_scan.max_hosts_per_target
        )
        timeout = max(0.05, (target["timeout_ms"] or 5000) / 1000.0)
        results = _probe_all(ctx, pairs, timeout, settings.network_scan.concurrency)
        found, new = _store(
            ctx, target, results, errors, started_at, int((time.monotonic() - started) * 1000)
        )
    except BaseException:
        with transaction(ctx) as cur:
            cur.execute(
                Q["release_target"],
                {
                    "id": target["id"],
                    "replica": ctx.replica_id,
                    "token": target["scan_claimed_until"],
                },
            )
        raise
    ctx.count("targets_scanned")
    ctx.count("endpoints_probed", len(results))
    ctx.count("certificates_found", found)
    ctx.count("certificates_new", new)


def run(ctx: TickContext) -> None:
    """One tick: scan due targets one by one until none is left unclaimed."""
    settings: LoopsSettings = ctx.config
    ensure_sentinel_agent(ctx)
    while True:
        ctx.check()
        with transaction(ctx) as cur:
            cur.execute(
                Q["claim_target"],
                {
                    "replica": ctx.replica_id,
                    "ttl_seconds": float(settings.network_scan.claim_ttl),
                },
            )
            target = cur.fetchone()
        if target is None:
            return
        scan_target(ctx, target, settings)


def build(settings: LoopsSettings) -> LoopSpec | None:
    """The loop, or None when ``loops.network_scan.loop.enabled`` is false."""
    return everywhere(
        NAME,
        settings.network_scan.loop,
        run,
        timeout=TIMEOUT,
        run_on_start=True,
        description="TLS-scan due network targets and upsert what they serve",
    )
