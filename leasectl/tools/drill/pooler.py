"""A real PgBouncer in transaction mode in front of the drill's database (``pooler-restart``).

The replicas' work pools connect through it; their lock connections go direct
(``database.lock_dsn``), as docs/safety.md requires. A ``pooler-restart`` round stops it
(SIGTERM: every client and server connection is cut) and starts it again on the same port.
PgBouncer refuses to run as root, so it runs as the embedded server's user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo

from leasectl.embedded import SYSTEM_USER, _free_port

ALIAS = "drillwork"


def binary() -> str | None:
    """The pgbouncer executable, or None (the drill then skips ``pooler-restart``)."""
    found = shutil.which("pgbouncer")
    if found is None and os.path.exists("/usr/sbin/pgbouncer"):
        found = "/usr/sbin/pgbouncer"
    return found


class PgBouncer:
    """One PgBouncer process serving ``ALIAS`` (transaction mode) for ``backend_dsn``."""

    def __init__(
        self,
        workdir: Path,
        backend_dsn: str,
        listen: Sequence[str],
        *,
        pool_size: int = 20,
        max_client_conn: int = 500,
    ) -> None:
        exe = binary()
        if exe is None:
            raise RuntimeError("pgbouncer not found (Debian: apt-get install pgbouncer)")
        self.exe = exe
        self.workdir = workdir / "pgbouncer"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.listen = list(listen)
        target = conninfo.conninfo_to_dict(backend_dsn)
        self.user = str(target.get("user") or "postgres")
        self.dbname = str(target["dbname"])
        backend = f"host={target['host']} port={target['port']} dbname={self.dbname}"
        (self.workdir / "userlist.txt").write_text(f'"{self.user}" ""\n')
        (self.workdir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{ALIAS} = {backend} pool_mode=transaction\n"
            "[pgbouncer]\n"
            f"listen_addr = {','.join(self.listen)}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.workdir / 'userlist.txt'}\n"
            f"logfile = {self.workdir / 'pgbouncer.log'}\n"
            f"pidfile = {self.workdir / 'pgbouncer.pid'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            f"max_client_conn = {max_client_conn}\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
        )
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SYSTEM_USER)
            for path in [self.workdir, *self.workdir.iterdir()]:
                os.chown(path, entry.pw_uid, entry.pw_gid)
            self._run_as = {"user": entry.pw_uid, "group": entry.pw_gid}
        self.proc: subprocess.Popen[bytes] | None = None

    def dsn(self, host: str = "127.0.0.1") -> str:
        return f"host={host} port={self.port} user={self.user} dbname={ALIAS}"

    def start(self, timeout: float = 15.0) -> float:
        """Start and wait until it serves a query; returns that instant."""
        self.proc = subprocess.Popen(  # noqa: S603 - the installed pgbouncer, our own config
            [self.exe, str(self.workdir / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.workdir,
            start_new_session=True,
            **self._run_as,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited {self.proc.returncode}: {self.log_tail()}")
            try:
                with psycopg.connect(self.dsn(), connect_timeout=1, autocommit=True) as c:
                    c.execute("SELECT 1")
                return time.time()
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not accept connections in {timeout}s")

    def stop(self) -> float:
        """SIGTERM (immediate shutdown: every connection cut); returns the instant."""
        t = time.time()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return t

    def restart(self) -> tuple[float, float]:
        """(instant stopped, instant serving again)."""
        t_stop = self.stop()
        return t_stop, self.start()

    def log_tail(self) -> str:
        log = self.workdir / "pgbouncer.log"
        return log.read_text(errors="replace")[-1500:] if log.exists() else ""
