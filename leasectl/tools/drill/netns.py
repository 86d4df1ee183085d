"""Real network partitions: each replica in its own network namespace, joined by a veth pair.

Every replica slot gets a namespace ``lcd<pid>n<i>`` and a veth pair whose host end
(``lcd<pid>h<i>``) carries ``10.213.X.(4i+1)/30`` and whose namespace end carries
``.(4i+2)/30``. The /24 ``10.213.X.0`` is picked so it exists on no interface of this
machine; it never leaves the machine. PostgreSQL listens on every host end.

A partition takes the namespace end down. The host end then has no carrier: the server's
packets to the replica are dropped silently by the veth (its route stays, flagged
``linkdown``), which is what a cut cable or a dead switch looks like to the server. The
server only learns of it from its keepalive / ``tcp_user_timeout`` settings (``D_srv``).

Needs root and iproute2 (``ip netns``). :func:`available` says why not, and the drill then
skips the ``partition`` kind; it never fakes one with a userspace proxy. Namespaces are
deleted on :meth:`NetnsSet.destroy` (also from ``atexit`` and on SIGINT/SIGTERM of the
drill), and :func:`cleanup_stale` removes those left by a drill process that died.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from leasectl.tools.replicas import pid_alive

PREFIX = "lcd"
_NAME = re.compile(rf"^{PREFIX}(?P<pid>\d+)n(?P<i>\d+)$")
_SUBNET_BASE = "10.213"
_TIMEOUT = 15.0


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message has the command and its stderr."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(  # noqa: S603 - iproute2's ip with our own arguments, no shell
        ["ip", *args],  # noqa: S607 - ip from PATH, as an operator would run it
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        check=False,
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def available() -> tuple[bool, str]:
    """Whether real partitions are possible here, and if not, why."""
    if shutil.which("ip") is None:
        return False, "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return False, "network namespaces need root (run the drill as root)"
    proc = _ip("netns", "list", check=False)
    if proc.returncode != 0:
        return False, f"`ip netns` does not work here: {proc.stderr.strip()}"
    return True, ""


def _used_prefixes() -> set[str]:
    """The ``a.b.c`` of every IPv4 address configured on this machine (host namespace)."""
    out = _ip("-o", "-4", "addr", "show", check=False).stdout
    used = set()
    for m in re.finditer(r"inet (\d+\.\d+\.\d+)\.\d+/", out):
        used.add(m.group(1))
    return used


def pick_subnet(pid: int | None = None) -> ipaddress.IPv4Network:
    """A 10.213.X.0/24 that no interface of this machine uses yet."""
    used = _used_prefixes()
    start = (pid if pid is not None else os.getpid()) % 200
    for offset in range(200):
        x = 20 + (start + offset) % 200
        if f"{_SUBNET_BASE}.{x}" not in used:
            return ipaddress.IPv4Network(f"{_SUBNET_BASE}.{x}.0/24")
    raise NetnsError("no free 10.213.X.0/24 subnet for the drill's veth pairs")


@dataclass(frozen=True)
class NetNamespace:
    """One replica slot's namespace and its veth pair."""

    name: str
    host_if: str
    ns_if: str
    host_addr: str
    ns_addr: str

    @classmethod
    def for_slot(cls, subnet: ipaddress.IPv4Network, slot: int, pid: int) -> NetNamespace:
        if slot >= 60:
            raise NetnsError("at most 60 replica slots per drill")
        base = int(subnet.network_address) + 4 * slot
        return cls(
            name=f"{PREFIX}{pid}n{slot}",
            host_if=f"{PREFIX}{pid}h{slot}",
            ns_if=f"{PREFIX}{pid}p{slot}",
            host_addr=str(ipaddress.IPv4Address(base + 1)),
            ns_addr=str(ipaddress.IPv4Address(base + 2)),
        )

    def create(self) -> None:
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("-n", self.name, "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if)
            _ip("-n", self.name, "link", "set", "lo", "up")
            _ip("-n", self.name, "link", "set", self.ns_if, "up")
        except BaseException:
            self.destroy()
            raise

    def partition(self) -> None:
        """Cut the link: the server's packets to this namespace are now silently dropped."""
        _ip("-n", self.name, "link", "set", self.ns_if, "down")

    def heal(self) -> None:
        _ip("-n", self.name, "link", "set", self.ns_if, "up")

    def is_up(self) -> bool:
        out = _ip("-n", self.name, "-o", "link", "show", self.ns_if, check=False).stdout
        return ",UP" in out or "<UP" in out

    def exec_prefix(self) -> list[str]:
        """Prefix a command with this to run it inside the namespace (same pid: exec)."""
        return ["ip", "netns", "exec", self.name]

    def destroy(self) -> None:
        # Deleting the namespace destroys the veth end inside it, and with it the pair.
        _ip("link", "del", self.host_if, check=False)
        _ip("netns", "del", self.name, check=False)


class NetnsSet:
    """The namespaces of one drill; destroyed exactly once, whatever happens."""

    def __init__(self, slots: int, *, pid: int | None = None) -> None:
        self.pid = pid if pid is not None else os.getpid()
        self.subnet = pick_subnet(self.pid)
        self.namespaces = [NetNamespace.for_slot(self.subnet, i, self.pid) for i in range(slots)]
        self._created: list[NetNamespace] = []
        self._destroyed = False

    @property
    def hba_line(self) -> str:
        return f"host all all {self.subnet} trust"

    @property
    def host_addrs(self) -> list[str]:
        return [ns.host_addr for ns in self.namespaces]

    def create(self) -> None:
        atexit.register(self.destroy)
        try:
            for ns in self.namespaces:
                ns.create()
                self._created.append(ns)
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        for ns in self._created:
            ns.destroy()

    def __enter__(self) -> NetnsSet:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def stale_namespaces(names: Sequence[str]) -> list[str]:
    """Drill namespaces whose creating process is gone (pure: takes the listing)."""
    stale = []
    for name in names:
        m = _NAME.match(name)
        if m and not pid_alive(int(m.group("pid"))):
            stale.append(name)
    return stale


def cleanup_stale() -> list[str]:
    """Delete namespaces (and their veth pairs) left behind by dead drill processes."""
    out = _ip("netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    removed = []
    for name in stale_namespaces(names):
        m = _NAME.match(name)
        assert m is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        _ip("link", "del", f"{PREFIX}{m.group('pid')}h{m.group('i')}", check=False)
        _ip("netns", "del", name, check=False)
        removed.append(name)
    return removed
