"""The safety inequality and the timing rules, as pure functions of the settings.

One definition for both places that judge them: the lease manager's start check (which
refuses to hold leases when ``lease_ttl + safety_margin`` exceeds the lock connection's D_srv)
and ``leasectl timing`` (which explains every bound). See docs/safety.md.
"""

from __future__ import annotations

from typing import NamedTuple

from leasectl.locks import TcpBound
from leasectl.settings import LeaseSettings


class Rule(NamedTuple):
    """One timing rule: whether it holds, and the rule with its numbers."""

    holds: bool | None  # None: exempt (a Unix socket has no D_srv)
    text: str


def safety_rules(ls: LeaseSettings, d_srv: float | None) -> list[Rule]:
    """The three rules docs/safety.md derives: a holder stops believing before the server
    may let anyone else in, eviction waits at least the margin past that, and a heartbeat
    fits inside the validity it renews."""
    budget = ls.lease_ttl + ls.safety_margin
    if d_srv is None:
        first = Rule(
            None,
            f"lease_ttl + safety_margin = {budget:g}s <= D_srv: exempt (Unix socket: no "
            "partition possible)",
        )
    else:
        first = Rule(
            budget <= d_srv, f"lease_ttl + safety_margin = {budget:g}s <= D_srv = {d_srv:g}s"
        )
    return [
        first,
        Rule(
            ls.eviction_grace >= ls.safety_margin,
            f"eviction_grace = {ls.eviction_grace:g}s >= safety_margin = {ls.safety_margin:g}s",
        ),
        Rule(
            ls.heartbeat_interval < ls.lease_ttl,
            f"heartbeat_interval = {ls.heartbeat_interval:g}s < lease_ttl = {ls.lease_ttl:g}s",
        ),
    ]


def inequality_violation(ls: LeaseSettings, tcp: TcpBound) -> str | None:
    """Why the lock connection's TCP settings break the safety inequality (None: they do not,
    or it is a Unix socket)."""
    d_srv = tcp.d_srv
    budget = ls.lease_ttl + ls.safety_margin
    if d_srv is None or budget <= d_srv:
        return None
    return (
        f"lease_ttl ({ls.lease_ttl}s) + safety_margin ({ls.safety_margin}s)"
        f" = {budget}s exceeds D_srv = {d_srv}s, the earliest time the server "
        f"may drop a silent holder (tcp_keepalives_idle={tcp.idle}, "
        f"interval={tcp.interval}, count={tcp.count}, "
        f"tcp_user_timeout={tcp.user_timeout_ms}ms as read back with SHOW). "
        "Lower lease_ttl or raise the keepalive/user-timeout settings."
    )
