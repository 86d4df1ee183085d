"""Real partitions: a namespace behind a veth pair loses the link, then gets it back."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from leasectl.tools.drill import netns

ok, why = netns.available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(not ok, reason=why or "netns unavailable")]

PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5).close()
except OSError as exc:
    print(type(exc).__name__); sys.exit(1)
"""


def connect_from(ns: netns.NetNamespace, host: str, port: int) -> bool:
    proc = subprocess.run(
        [*ns.exec_prefix(), sys.executable, "-c", PROBE, host, str(port)],
        capture_output=True,
        timeout=20,
    )
    return proc.returncode == 0


def test_partition_and_heal() -> None:
    nets = netns.NetnsSet(2)
    with nets:
        ns = nets.namespaces[0]
        listener = socket.create_server((ns.host_addr, 0))
        port = listener.getsockname()[1]
        try:
            assert connect_from(ns, ns.host_addr, port)
            # Only this drill's own /30: the other slot's host end is another subnet.
            assert ns.host_addr != nets.namespaces[1].host_addr
            ns.partition()
            assert not ns.is_up()
            assert not connect_from(ns, ns.host_addr, port)
            ns.heal()
            assert ns.is_up()
            assert connect_from(ns, ns.host_addr, port)
        finally:
            listener.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert all(n.name not in listed for n in nets.namespaces)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert all(n.host_if not in links for n in nets.namespaces)
