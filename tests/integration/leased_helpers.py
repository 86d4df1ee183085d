"""Helpers for the leased-loop tests: real leases, a tick context, a tiny CA, receivers."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import default
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg_pool import ConnectionPool

from leasectl.lease_manager import LeaseManager
from leasectl.leases import Lease
from leasectl.limits import RateLimiter
from leasectl.loop import LoopSpec, TickContext
from leasectl.settings import CoreSettings

UTC = dt.UTC


@contextmanager
def leased(dsn: str, name: str, replica: str = "replica-a") -> Iterator[tuple[LeaseManager, Lease]]:
    """A started LeaseManager holding ``name``; stopped (released) on exit."""
    manager = LeaseManager(replica, [name], CoreSettings(), dsn=dsn)
    manager.start()
    try:
        yield manager, manager.wait_for(name, timeout=10)
    finally:
        manager.stop()


@contextmanager
def pool_for(dsn: str) -> Iterator[ConnectionPool]:
    pool = ConnectionPool(dsn, min_size=1, max_size=4, open=False)
    pool.open(wait=True, timeout=10)
    try:
        yield pool
    finally:
        pool.close()


@contextmanager
def one_connection_pool(dsn: str, application_name: str) -> Iterator[ConnectionPool]:
    """A pool of exactly one work connection, named so a test can terminate its backend.

    With one connection the tick's next statement after :func:`terminate_backends` is sure
    to run on the terminated backend (the pool does not test connections it hands out).
    """
    pool = ConnectionPool(
        dsn, min_size=1, max_size=1, open=False, kwargs={"application_name": application_name}
    )
    pool.open(wait=True, timeout=10)
    try:
        yield pool
    finally:
        pool.close()


def terminate_backends(conn: psycopg.Connection[Any], application_name: str) -> int:
    """``pg_terminate_backend`` every session named ``application_name``, waiting (up to 10 s)
    until each has exited; returns how many were terminated."""
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
        "WHERE application_name = %s AND pid <> pg_backend_pid()",
        (application_name,),
    ).fetchall()
    assert all(ok for (ok,) in rows), "a backend did not exit within 10 s"
    return len(rows)


def tick(
    spec: LoopSpec,
    pool: ConnectionPool,
    lease: Lease,
    *,
    config: Any = None,
    replica: str = "replica-a",
    tick_at: dt.datetime | None = None,
    limiter: RateLimiter | None = None,
) -> TickContext:
    """Run one tick of ``spec`` directly, as the scheduler would; return its context."""
    ctx = TickContext(
        limiter=limiter,
        loop=spec.name,
        replica_id=replica,
        pool=pool,
        config=config,
        tick_at=tick_at or dt.datetime.now(UTC).replace(microsecond=0),
        deadline=time.monotonic() + 60,
        lease=lease,
    )
    spec.run(ctx)
    return ctx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- certificates -------------------------------------------------------------------------


@dataclass
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "Test CA") -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return CA(cert, key)


def issue(
    ca: CA,
    cn: str,
    *,
    sans: tuple[str, ...] = (),
    days: int = 90,
    ip: str | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(UTC)
    names: list[x509.GeneralName] = [x509.DNSName(s) for s in (sans or (cn,))]
    if ip:
        names.append(x509.IPAddress(ipaddress.ip_address(ip)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key


def pem(obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, server cert.pem, server key.pem) for 127.0.0.1 / localhost."""
    ca = make_ca("Test TLS CA")
    cert, key = issue(ca, "localhost", sans=("localhost",), ip="127.0.0.1")
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_text(ca.cert_pem)
    paths[1].write_bytes(pem(cert))
    paths[2].write_bytes(pem(key))
    return paths


# -- a webhook receiver ---------------------------------------------------------------------


@dataclass
class Received:
    key: str
    epoch: int
    replica: str
    signature_ok: bool
    body: dict[str, Any]


@dataclass
class Receiver:
    """A real HTTP server that checks the HMAC and records each delivery."""

    hmac_key: str
    status: Callable[[Received], int] = lambda r: 200
    received: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/leasectl?token=s3cret"

    def __enter__(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                want = (
                    "sha256=" + hmac.new(outer.hmac_key.encode(), body, hashlib.sha256).hexdigest()
                )
                got = self.headers.get("X-Leasectl-Signature", "")
                rec = Received(
                    key=self.headers["Idempotency-Key"],
                    epoch=int(self.headers["X-Leasectl-Epoch"]),
                    replica=self.headers["X-Leasectl-Replica"],
                    signature_ok=hmac.compare_digest(want, got),
                    body=json.loads(body),
                )
                outer.received.append(rec)
                code = outer.status(rec) if rec.signature_ok else 401
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


# -- an SMTP server -------------------------------------------------------------------------


class Inbox:
    """aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(message_from_bytes(envelope.original_content, policy=default))
        return "250 OK"


@contextmanager
def smtp_server(**kwargs: Any) -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server on 127.0.0.1 in this process: ``(inbox, port)``."""
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()
