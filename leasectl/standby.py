"""A standby replica's view of the cluster, read through the pooler (``leases.standby: pooled``).

A session advisory lock needs a session of its own on the server, and a transaction-mode
pooler cannot give one: so with hundreds of replicas the lock sessions, not the statements,
are what a PostgreSQL runs out of. But only a few replicas need one at any moment: the
holders, the replica placement chooses for each lease, and each held lease's *heir* (the one
placement would choose were the holder gone). Every other replica is a *standby*: it keeps one
ordinary connection through the work DSN (a client connection of the pooler, no server
session of its own) and sends one statement per ``heartbeat_interval`` (``poll`` in
standby.sql) that stamps its row and reads the live replicas and each lease's holder. When
:func:`leasectl.placement.direct_reason` says it is needed, the lease manager opens its lock
session; when it has been needed by nothing for ``standby_after``, it closes it again.

Nothing here holds or fences anything: a standby only decides *when to connect*. Whoever takes
a lease still does so with a try-lock on its own lock session and an epoch bump, exactly as
in ``direct`` mode, so the guarantees in docs/safety.md are unchanged; what changes is how
soon a lease without a live heir is taken (docs/operator/running-a-cluster.md, sizing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, Self

import psycopg

from leasectl import sql
from leasectl.db import connect_kwargs
from leasectl.errors import ConfigError, DatabaseUnavailable
from leasectl.keys import find_collision
from leasectl.locks import Drain, id_in_use, translate_error
from leasectl.placement import Replica
from leasectl.settings import DatabaseSettings

Q = sql.load("standby")
L = sql.load("leases")  # cluster_lease_names and replica_row: shared with the lock session


class StandbyView(NamedTuple):
    """One poll's answer."""

    replicas: list[Replica] | None  # live, as placement ranks them; None: as last time
    holders: dict[str, str | None]  # lease -> the replica its row names while locked; None: free
    view_hash: str  # fingerprint of ``replicas``: pass it to the next poll
    drain: Drain | None = None  # a step-down --replica asked of this replica (None: not asked)


class StandbyPoll(Protocol):
    """A standby's connection as the lease manager uses it (:class:`StandbySession` is the
    real one; the simulator has its own)."""

    def poll(
        self,
        replica: str,
        *,
        host: str,
        pid: int,
        version: str,
        may_lead: bool,
        loops: Sequence[str],
        labels: Sequence[str],
        campaigns_for: Sequence[str],
        preferred_for: Sequence[str],
        names: Sequence[str],
        live_s: float,
        seen: str = "",
        want_view: bool = True,
    ) -> StandbyView | None: ...
    def key_collision(self, names: Sequence[str]) -> tuple[str, str, int] | None: ...
    def refused(self, replica: str) -> ConfigError: ...
    def stopped(self, replica: str) -> None: ...
    def close(self) -> None: ...


class StandbySession:
    """A standby's one connection through the work DSN: autocommit, nothing prepared (a
    transaction pooler may run each statement on another server connection)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @classmethod
    def connect(cls, dsn: str, db: DatabaseSettings, application_name: str) -> Self:
        kwargs = connect_kwargs(dsn, db, application_name)
        try:
            conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None, **kwargs)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot open the standby connection: {exc}") from exc
        return cls(conn)

    def poll(
        self,
        replica: str,
        *,
        host: str,
        pid: int,
        version: str,
        may_lead: bool,
        loops: Sequence[str],
        labels: Sequence[str],
        campaigns_for: Sequence[str],
        preferred_for: Sequence[str],
        names: Sequence[str],
        live_s: float,
        seen: str = "",
        want_view: bool = True,
    ) -> StandbyView | None:
        """Stamp the row and read the cluster; None: the id belongs to another live replica.

        ``seen``: the ``view_hash`` of the last answer; the live replicas are sent again only
        when they changed (300 rows of JSON a second per standby would be most of its cost),
        and only if ``want_view``: a standby far down every lease's order skips a change.
        """
        params = {
            "id": replica,
            "host": host,
            "pid": pid,
            "version": version,
            "may_lead": may_lead,
            "loops": list(loops),
            "labels": list(labels),
            "campaigns_for": list(campaigns_for),
            "preferred_for": list(preferred_for),
            "names": list(names),
            "live_s": live_s,
            "seen": seen,
            "want": want_view,
        }
        try:
            row = self.conn.execute(Q["poll"], params).fetchone()
        except psycopg.Error as exc:
            raise translate_error(exc, "standby connection") from exc
        assert row is not None  # noqa: S101 - narrows a type for mypy; one row by construction
        if not row[0]:
            return None
        _, view_hash, view, leases, drain_age, drain_cooldown = row
        replicas = [Replica.from_row(r) for r in view] if view is not None else None
        # a locked lease whose row names nobody yet (between lock and epoch bump): "?"
        holders = {str(n): (str(h or "?") if locked else None) for n, h, locked in leases}
        drain = Drain(float(drain_age), drain_cooldown) if drain_age is not None else None
        return StandbyView(replicas, holders, str(view_hash), drain)

    def key_collision(self, names: Sequence[str]) -> tuple[str, str, int] | None:
        """As :meth:`leasectl.locks.LockSession.key_collision`, checked before any lock session."""
        try:
            rows = self.conn.execute(L["cluster_lease_names"]).fetchall()
        except psycopg.Error as exc:
            raise translate_error(exc, "standby connection") from exc
        return find_collision(names, [str(r[0]) for r in rows])

    def refused(self, replica: str) -> ConfigError:
        """The error for an id another live replica uses (after :meth:`poll` returned None)."""
        try:
            row = self.conn.execute(L["replica_row"], {"id": replica}).fetchone()
        except psycopg.Error:
            row = None
        return id_in_use(replica, row)

    def stopped(self, replica: str) -> None:
        """Mark this standby stopped (a graceful stop; it holds nothing to hand over)."""
        try:
            self.conn.execute(Q["stopped"], {"id": replica})
        except psycopg.Error as exc:
            raise translate_error(exc, "standby connection") from exc

    def close(self) -> None:
        self.conn.close()
