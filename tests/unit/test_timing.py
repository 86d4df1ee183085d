"""The safety inequality: one pure definition for the lease manager's start check and
``leasectl timing``."""

from __future__ import annotations

from dataclasses import replace

from leasectl.cli.timing import explain
from leasectl.locks import TcpBound
from leasectl.settings import LeaseSettings, Settings
from leasectl.timing import inequality_violation, safety_rules

TCP = TcpBound(4, 1, 4, 9000, unix_socket=False)  # D_srv = 9 s


def test_the_start_check_and_leasectl_timing_judge_alike() -> None:
    for ttl in (3.0, 5.0, 7.0, 7.5, 12.0):
        ls = replace(LeaseSettings(), lease_ttl=ttl)
        problem = inequality_violation(ls, TCP)
        rules = safety_rules(ls, TCP.d_srv)
        cli = explain(replace(Settings(), leases=ls), TCP)
        assert (problem is None) == bool(rules[0].holds) == cli.inequality_holds, ttl
        assert rules[0].text in cli.checks[0]
    assert "exceeds D_srv = 9.0s" in (
        inequality_violation(replace(LeaseSettings(), lease_ttl=8.0), TCP) or ""
    )


def test_a_unix_socket_is_exempt() -> None:
    unix = TcpBound(0, 0, 0, 0, unix_socket=True)
    ls = replace(LeaseSettings(), lease_ttl=60.0, heartbeat_interval=1.0)
    assert inequality_violation(ls, unix) is None
    assert safety_rules(ls, None)[0].holds is None
