"""Fault-kind parsing and the round schedule."""

from __future__ import annotations

import pytest

from leasectl.tools.drill.faults import KINDS, parse_kinds, schedule
from leasectl.tools.drill.netns import NetNamespace, pick_subnet, stale_namespaces


def test_parse_kinds() -> None:
    assert parse_kinds("graceful, kill,kill") == ["graceful", "kill"]
    assert parse_kinds(",".join(KINDS)) == list(KINDS)
    with pytest.raises(ValueError, match="unknown fault kind"):
        parse_kinds("graceful,explode")
    with pytest.raises(ValueError):
        parse_kinds(" , ")


def test_schedule_interleaves_kinds() -> None:
    assert schedule(["a", "b"], 2) == ["a", "b", "a", "b"]


def test_namespace_addresses_are_private_30s() -> None:
    import ipaddress

    subnet = ipaddress.IPv4Network("10.213.77.0/24")
    ns = NetNamespace.for_slot(subnet, 2, 4194303)
    assert (ns.host_addr, ns.ns_addr) == ("10.213.77.9", "10.213.77.10")
    assert len(ns.host_if) <= 15 and len(ns.ns_if) <= 15  # Linux IFNAMSIZ


def test_pick_subnet_is_10_213() -> None:
    assert str(pick_subnet(1).network_address).startswith("10.213.")


def test_stale_namespaces_only_of_dead_drills() -> None:
    import os

    mine = f"lcd{os.getpid()}n0"
    assert stale_namespaces([mine, "lcd999999999n1", "other", "lcdxn0"]) == ["lcd999999999n1"]


def test_replica_config_keeps_base_but_not_its_dsn() -> None:
    from leasectl.tools.drill.runner import replica_config

    base = {
        "database": {"dsn": "host=elsewhere", "tcp_user_timeout_ms": 12000},
        "leases": {"lease_ttl": 4.0},
        "loops": {"notifications": {"batch": 7, "send": {"interval": 60}}},
    }
    drill = {"loops": {"notifications": {"send": {"interval": 1.0}}}}
    out = replica_config(base, drill)
    assert out["database"] == {"tcp_user_timeout_ms": 12000}
    assert out["leases"] == {"lease_ttl": 4.0}
    assert out["loops"]["notifications"] == {"batch": 7, "send": {"interval": 1.0}}
