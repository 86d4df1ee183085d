"""Helpers for the everywhere-loop tests: a tick context, domain rows, a local TLS server."""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from psycopg_pool import ConnectionPool

from leasectl.certs import ca
from leasectl.certs.settings import LoopsSettings
from leasectl.loop import TickContext
from tests.ca_test_keys import PLAINTEXT_OK, TEST_CA_KEYS, seeded_ca

UTC = dt.UTC


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool]:
    """A work pool on the test database, like the scheduler's (transactions, not autocommit)."""
    p = ConnectionPool(dsn, min_size=1, max_size=10, open=False)
    p.open(wait=True, timeout=10)
    try:
        yield p
    finally:
        p.close()


def make_ctx(
    pool: ConnectionPool,
    settings: LoopsSettings | None = None,
    *,
    loop: str = "test",
    replica: str = "replica-a",
    timeout: float = 60.0,
) -> TickContext:
    """A tick context as the scheduler builds it for an ``everywhere`` loop (no lease)."""
    return TickContext(
        loop=loop,
        replica_id=replica,
        pool=pool,
        # Seeded issuers' keys are encrypted under the test KEK (tests/ca_test_keys.py).
        config=settings
        if settings is not None and settings.ca.kek
        else dataclasses.replace(settings or LoopsSettings(), ca=TEST_CA_KEYS),
        tick_at=dt.datetime.now(UTC),
        deadline=time.monotonic() + timeout,
    )


def run_concurrently(*calls: Callable[[], None]) -> None:
    """Start every call at once on its own thread (a barrier), re-raising the first error."""
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def wrap(call: Callable[[], None]) -> None:
        barrier.wait()
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test below
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]


@dataclass
class Issuer:
    id: str
    cert_pem: str
    key_pem: str

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem.encode())


def add_issuer(conn: psycopg.Connection[Any], issuer_id: str = "iss-local") -> Issuer:
    cert_pem, stored_key, key_pem = seeded_ca(f"Test CA {issuer_id}")  # stored encrypted
    conn.execute(
        "INSERT INTO leasectl_certs.issuers (id, name, type, ca_cert_pem, ca_key_pem) "
        "VALUES (%s, %s, 'local', %s, %s)",
        (issuer_id, issuer_id, cert_pem, stored_key),
    )
    return Issuer(issuer_id, cert_pem, key_pem)


def add_certificate(
    conn: psycopg.Connection[Any],
    cert_id: str,
    *,
    issuer_id: str | None = "iss-local",
    status: str = "Active",
    expires_in: dt.timedelta | None = dt.timedelta(days=60),
    owner_id: str | None = None,
    policy_id: str | None = None,
    profile_id: str | None = None,
    sans: list[str] | None = None,
) -> None:
    expires = dt.datetime.now(UTC) + expires_in if expires_in is not None else None
    conn.execute(
        "INSERT INTO leasectl_certs.managed_certificates (id, name, common_name, sans, "
        "issuer_id, status,"
        " expires_at, owner_id, renewal_policy_id, certificate_profile_id)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            cert_id,
            cert_id,
            f"{cert_id}.example.test",
            sans or [],
            issuer_id,
            status,
            expires,
            owner_id,
            policy_id,
            profile_id,
        ),
    )


def add_job(
    conn: psycopg.Connection[Any],
    job_id: str,
    job_type: str = "Issuance",
    *,
    certificate_id: str | None = None,
    status: str = "Pending",
    attempts: int = 0,
    max_attempts: int = 3,
    agent_id: str | None = None,
    **extra: Any,
) -> None:
    cols = ["id", "type", "certificate_id", "status", "attempts", "max_attempts", "agent_id"]
    vals: list[Any] = [job_id, job_type, certificate_id, status, attempts, max_attempts, agent_id]
    for k, v in extra.items():
        cols.append(k)
        vals.append(v)
    marks = ", ".join(["%s"] * len(vals))
    conn.execute(
        f"INSERT INTO leasectl_certs.jobs ({', '.join(cols)}) VALUES ({marks})", vals
    )  # test-only


def job_row(conn: psycopg.Connection[Any], job_id: str) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM leasectl_certs.jobs WHERE id = %s", (job_id,))
    assert cur.description is not None
    names = [d.name for d in cur.description]
    row = cur.fetchone()
    assert row is not None, job_id
    return dict(zip(names, row, strict=True))


def scalar(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return None if row is None else row[0]


@dataclass
class TlsServer:
    host: str
    port: int
    cert_pem: str

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def fingerprint(self) -> str:
        return ca.fingerprint_sha256(x509.load_pem_x509_certificate(self.cert_pem.encode()))


@contextmanager
def tls_server(common_name: str = "scan.example.test") -> Iterator[TlsServer]:
    """A TLS server on 127.0.0.1 (ephemeral port) serving a leaf from a fresh local CA.

    Each connection completes a handshake and is closed; the thread stops on exit.
    """
    ca_cert_pem, ca_key_pem = ca.create_ca("Scan Test CA")
    ca_cert, ca_key = ca.load_issuer_ca(ca_cert_pem, ca_key_pem, PLAINTEXT_OK)
    leaf = ca.issue_leaf(ca_cert, ca_key, common_name, ["127.0.0.1"], days=30)
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_file.write_text(leaf.chain_pem)
        key_file.write_text(leaf.key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=handle, args=(raw,), daemon=True).start()

    def handle(raw: socket.socket) -> None:
        raw.settimeout(2)
        try:
            with context.wrap_socket(raw, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass
        finally:
            raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield TlsServer("127.0.0.1", listener.getsockname()[1], leaf.cert_pem)
    finally:
        stop.set()
        thread.join(2)
        listener.close()


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
