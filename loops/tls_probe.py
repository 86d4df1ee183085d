"""One TLS handshake with the standard library, returning the peer's leaf certificate.

Used by network_scan and health_check. Verification is off on purpose: the point is to see
which certificate an endpoint serves (expired, self-signed or wrong-host ones included), never
to trust it; nothing is sent after the handshake. The timeout bounds connect and handshake
together, so a black-holed address costs at most ``timeout`` seconds of one worker thread.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeResult:
    """What one handshake saw: the leaf in DER on success, the reason otherwise."""

    host: str
    port: int
    ok: bool
    der: bytes | None = None
    tls_version: str | None = None
    cipher: str | None = None
    elapsed_ms: int = 0
    error: str | None = None

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.host, self.port)


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_endpoint(endpoint: str, default_port: int = 443) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or ``https://host:port/...`` → ``(host, port)``."""
    text = endpoint.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""  # a bare hostname, or a bare IPv6 literal
    if not host:
        raise ValueError(f"endpoint {endpoint!r} has no host")
    number = int(port) if port else default_port
    if not 0 < number < 65536:
        raise ValueError(f"endpoint {endpoint!r} has port {number} outside 1-65535")
    return host, number


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # A scanner should see legacy endpoints too; it sends nothing that needs protecting.
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    try:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    return context


def probe(host: str, port: int, timeout: float) -> ProbeResult:
    """Connect, handshake (SNI = host unless it is an IP literal) and return the peer leaf."""
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            raw.settimeout(max(0.001, timeout - (time.monotonic() - started)))
            server_name = None if _is_ip(host) else host
            with _context().wrap_socket(raw, server_hostname=server_name) as tls:
                der = tls.getpeercert(binary_form=True)
                cipher = tls.cipher()
                version = tls.version()
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return ProbeResult(host, port, ok=False, elapsed_ms=elapsed(), error=reason)
    if not der:
        return ProbeResult(
            host, port, ok=False, elapsed_ms=elapsed(), error="no peer certificate presented"
        )
    return ProbeResult(
        host,
        port,
        ok=True,
        der=der,
        tls_version=version,
        cipher=cipher[0] if cipher else None,
        elapsed_ms=elapsed(),
    )
