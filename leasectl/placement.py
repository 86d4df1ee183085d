"""Placement: which live replica should hold each lease (rendezvous hashing), as pure functions.

Leases would otherwise pile onto whichever replica campaigns first. Every replica ranks the
live candidates of a lease the same way, from data they all read from ``leasectl_replicas``:

* a *candidate* for lease ``L`` is a live replica (registered, not stopped, seen recently, its
  lock session connected or, with ``leases.standby: pooled``, a standby polling through the
  pooler) that campaigns for ``L`` (``campaigns_for``: it may lead, the loop
  runs there, its ``requires_labels`` are met, it is not in a step-down cooldown) and whose
  tick of ``L`` is not wedged;
* candidates that declare themselves preferred for ``L`` (``preferred_for``: the loop's
  ``preferred_holder`` names their id or one of their labels) rank first;
* within each group, rendezvous (highest-random-weight) hashing of ``(L, replica id)`` orders
  them: the highest score ranks first.

Each replica publishes its own ``campaigns_for`` / ``preferred_for`` (computed from its own
configuration), so the ranking needs no shared configuration: two replicas compute the same
order from the same rows. HRW makes the assignment stable: a replica joining or leaving moves
only the leases it wins or held (about M/N of them), nobody else's.

Placement changes *who tries when*, never the lock or the fence: a replica of rank ``r``
waits ``r * placement_step`` after it saw a lease free before it tries it (rank 0 tries at
once), and a holder hands a lease over (release + NOTIFY, at a tick boundary) only to the
best-ranked candidate once it has been live for ``rebalance_after`` seconds.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leasectl.loop import LoopSpec
    from leasectl.settings import LoopPlacement


@dataclass(frozen=True)
class LeasePolicy:
    """A leased loop's placement wishes.

    :param preferred_holder: a replica id or label: such replicas rank first for the lease.
    :param requires_labels: only replicas carrying every one of these labels may hold it.
    """

    preferred_holder: str | None = None
    requires_labels: tuple[str, ...] = ()

    def allows(self, labels: Iterable[str]) -> bool:
        """Whether a replica with ``labels`` may hold the lease at all."""
        return set(self.requires_labels) <= set(labels)

    def prefers(self, replica_id: str, labels: Iterable[str]) -> bool:
        """Whether ``preferred_holder`` names this replica (its id or one of its labels)."""
        ph = self.preferred_holder
        return bool(ph) and (ph == replica_id or ph in set(labels))


def merge_policy(
    preferred_holder: str | None,
    requires_labels: Sequence[str],
    override_preferred: str | None = None,
    override_requires: Sequence[str] | None = None,
) -> LeasePolicy:
    """A loop's own policy (from its :class:`~leasectl.loop.LoopSpec`), overridden field by
    field by the configuration (``leases.loops.<name>``; None keeps the loop's value)."""
    return LeasePolicy(
        preferred_holder=override_preferred if override_preferred is not None else preferred_holder,
        requires_labels=tuple(
            override_requires if override_requires is not None else requires_labels
        ),
    )


@dataclass(frozen=True)
class Replica:
    """One live replica as placement sees it (a row of ``leasectl_replicas``)."""

    id: str
    campaigns_for: frozenset[str] = frozenset()
    preferred_for: frozenset[str] = frozenset()
    wedged: frozenset[str] = frozenset()
    live_for: float = 0.0  # seconds since its lock session connected
    labels: tuple[str, ...] = field(default=(), compare=False)

    def candidate_for(self, lease: str) -> bool:
        return lease in self.campaigns_for and lease not in self.wedged

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Replica:
        """One row of ``leasectl_live_replicas`` as JSON: (id, campaigns_for, preferred_for,
        wedged, live_for, labels)."""
        rid, campaigns, preferred, wedged, live_for, labels = row
        return cls(
            str(rid),
            frozenset(campaigns or ()),
            frozenset(preferred or ()),
            frozenset(wedged or ()),
            float(live_for or 0.0),
            tuple(labels or ()),
        )


@functools.lru_cache(maxsize=1 << 16)  # hundreds of replicas re-rank every poll: hash once
def score(lease: str, replica_id: str) -> int:
    """The rendezvous weight of ``(lease, replica)``: stable across processes and versions."""
    digest = hashlib.sha256(lease.encode() + b"\x00" + replica_id.encode()).digest()
    return int.from_bytes(digest[:8], "big")


def turn_delay(rank: int, step: float) -> float:
    """How long a candidate of ``rank`` waits after it saw a lease free before it tries it
    (``leases.placement_step`` per rank: rank 0 tries at once). The one place this rule
    lives: the campaign (:meth:`Placement.try_delay`) and the standbys' questions
    (:func:`direct_reason`, ``LeaseCore.want_view``) read it here."""
    return rank * step


def _hrw_order(lease: str, replicas: Iterable[Replica]) -> list[Replica]:
    """The candidates for ``lease``: preferred ones first, then by HRW score (highest first)."""
    candidates = [r for r in replicas if r.candidate_for(lease)]
    return sorted(
        candidates, key=lambda r: (lease not in r.preferred_for, -score(lease, r.id), r.id)
    )


class Placement:
    """Who should hold what, for one view of the live replicas: rendezvous hashing with
    bounded load.

    Plain HRW gives each replica *about* M/N leases (with 3 replicas and 6 leases, 3/2/1 is
    common). So leases are assigned in a fixed order (name), each to its best-ranked candidate
    that holds fewer than ``ceil(M / N)`` so far; a lease whose ``preferred_holder`` has a live
    candidate goes to that candidate first, whatever the load. Every replica computes the same
    assignment from the same rows. A replica joining or leaving changes the assignment of the
    leases it wins or held, plus the few that a changed load bound pushes along.

    ``rank(lease, replica)``: 0 for the assigned replica, then the other candidates by
    (preferred, HRW score): the order in which they try a free lease.
    """

    def __init__(self, replicas: Iterable[Replica]) -> None:
        self.replicas = sorted(replicas, key=lambda r: r.id)
        self._by_id = {r.id: r for r in self.replicas}
        leases = sorted({n for r in self.replicas for n in r.campaigns_for if r.candidate_for(n)})
        self._hrw = {n: _hrw_order(n, self.replicas) for n in leases}
        self.assignment = self._assign(leases)

    def _assign(self, leases: list[str]) -> dict[str, str]:
        active = [r for r in self.replicas if any(r.candidate_for(n) for n in r.campaigns_for)]
        cap = math.ceil(len(leases) / len(active)) if active else 0
        load = {r.id: 0 for r in self.replicas}
        out: dict[str, str] = {}
        # Explicit wishes first: a live preferred candidate gets its lease whatever the load.
        for n in leases:
            best = self._hrw[n][0]
            if n in best.preferred_for:
                out[n] = best.id
                load[best.id] += 1
        for n in leases:
            if n in out:
                continue
            ranked = self._hrw[n]
            pick = next((r for r in ranked if load[r.id] < cap), None)
            if pick is None:  # constraints leave only full candidates: the least loaded
                pick = min(ranked, key=lambda r: load[r.id])
            out[n] = pick.id
            load[pick.id] += 1
        return out

    def ranking(self, lease: str) -> list[Replica]:
        """The candidates for ``lease``, best first (the assigned one, then HRW order)."""
        ranked = self._hrw.get(lease, [])
        chosen = self.assignment.get(lease)
        return sorted(ranked, key=lambda r: r.id != chosen)  # stable: HRW order otherwise

    def rank(self, lease: str, replica_id: str) -> int | None:
        """0 for the best candidate, 1 for the next...; None when not a candidate."""
        for i, r in enumerate(self.ranking(lease)):
            if r.id == replica_id:
                return i
        return None

    def choose(self, lease: str) -> str | None:
        """The replica placement would choose for ``lease`` (None: no live candidate)."""
        return self.assignment.get(lease)

    def try_delay(self, lease: str, replica_id: str, step: float) -> float:
        """How long after seeing ``lease`` free this replica waits before trying it.

        ``rank * step``; a replica that is not a candidate in this view (not registered yet,
        or seen as not live) counts as ranking after every live candidate.
        """
        r = self.rank(lease, replica_id)
        if r is None:
            r = len(self._hrw.get(lease, []))
        return turn_delay(r, step)

    def rebalance_target(
        self,
        lease: str,
        holder: str,
        *,
        settle: float,
        live_for: Mapping[str, float] | None = None,
    ) -> str | None:
        """The replica the holder should hand ``lease`` over to now, or None to keep it.

        Only the chosen replica, and only once it has been live for ``settle`` seconds: a
        better replica still settling makes the holder wait rather than hand the lease to an
        intermediate one, so a lease moves once per rebalance. None when the holder is the
        choice, or nobody is. ``live_for``: fresher values than this view's, by replica id
        (a caller that keeps one Placement while only the replicas' ages change).
        """
        chosen = self.assignment.get(lease)
        if chosen is None or chosen == holder:
            return None
        age = live_for.get(chosen, 0.0) if live_for is not None else self._by_id[chosen].live_for
        return chosen if age >= settle else None


def direct_reason(
    replica_id: str,
    leases: Iterable[str],
    replicas: Sequence[Replica],
    holders: Mapping[str, str | None],
    free_for: Mapping[str, float],
    step: float,
    *,
    base: Placement | None = None,
) -> str | None:
    """Why ``replica_id`` needs a lock session of its own now, or None (``leases.standby:
    pooled``: without one it watches through the pooler).

    It does while it holds one of ``leases``; while placement chooses it for one (to take it
    when free, or to receive it in a rebalance); while it is a held lease's *heir*, the replica
    placement would choose were the holder gone, which must be ready to take over at once;
    and when a lease has been free long enough for its rank to try it (the better-ranked
    replicas did not take it). ``holders``: each lease's holder (None: free);
    ``free_for``: seconds each free lease has been seen free; ``replicas``: the live view,
    this replica included; ``base``: a Placement of that same view, if the caller has one.
    So the lock sessions number the holders plus one heir per lease, whatever the number of
    replicas.
    """
    leases = list(leases)
    everything = {n for r in replicas for n in r.campaigns_for if r.candidate_for(n)}
    me = next((r for r in replicas if r.id == replica_id), None)
    if me is None:
        return None
    plans: dict[str | None, Placement] = {} if base is None else {None: base}

    def plan(without: str | None = None) -> Placement:
        if without not in plans:
            plans[without] = Placement([r for r in replicas if r.id != without])
        return plans[without]

    for lease in leases:
        holder = holders.get(lease)
        if holder == replica_id:
            return f"holds {lease}"
        if not me.candidate_for(lease):
            continue
        position = hrw_position(lease, replica_id, replicas) or 0
        if holder is not None and position > len(everything):
            # Bounded load puts a lease's choice among the first M of its HRW order (at most
            # M - 1 replicas can be full before it), and a holder gone moves everyone up one:
            # further down, this replica is neither the choice nor the heir.
            continue
        if plan().choose(lease) == replica_id:
            return f"placement chooses it for {lease}"
        if holder is None:
            rank = plan().rank(lease, replica_id) or 0
            if lease in free_for and free_for[lease] >= turn_delay(rank, step):
                return f"{lease} is free and it is its turn (rank {rank})"
        elif plan(holder).choose(lease) == replica_id:
            return f"heir of {lease} (held by {holder})"
    return None


def hrw_position(lease: str, replica_id: str, replicas: Sequence[Replica]) -> int | None:
    """How many candidates of ``lease`` rank before ``replica_id`` in plain HRW order (None:
    not a candidate). Bounded load puts a lease's choice among the first M of this order, and
    one replica leaving moves everyone up by one at most. Counted, not sorted."""
    me = next((r for r in replicas if r.id == replica_id), None)
    if me is None or not me.candidate_for(lease):
        return None
    key = (lease not in me.preferred_for, -score(lease, me.id), me.id)
    return sum(
        1
        for r in replicas
        if r.candidate_for(lease)
        and (lease not in r.preferred_for, -score(lease, r.id), r.id) < key
    )


def ranking(lease: str, replicas: Iterable[Replica]) -> list[Replica]:
    """The candidates for ``lease``, best first, in the view ``replicas``."""
    return Placement(replicas).ranking(lease)


def choose(leases: Iterable[str], replicas: Iterable[Replica]) -> dict[str, str | None]:
    """The replica placement would choose for each lease (None: no live candidate)."""
    plan = Placement(replicas)
    return {lease: plan.choose(lease) for lease in leases}


def self_view(
    replica_id: str,
    campaigns_for: Iterable[str],
    preferred_for: Iterable[str],
    replicas: Iterable[Replica],
    live_for: float = 0.0,
) -> list[Replica]:
    """``replicas`` with this replica's own entry replaced by what it knows locally (its row
    as read may lag behind a change it just made, or be missing before it is visible)."""
    others = [r for r in replicas if r.id != replica_id]
    mine = next((r for r in replicas if r.id == replica_id), None)
    me = Replica(
        replica_id,
        frozenset(campaigns_for),
        frozenset(preferred_for),
        frozenset(),
        mine.live_for if mine is not None else live_for,
        mine.labels if mine is not None else (),
    )
    return [*others, me]


def policies_of(
    names: Iterable[str], policies: Mapping[str, LeasePolicy]
) -> dict[str, LeasePolicy]:
    """The policy of every name (the default, no wishes, for names without one)."""
    return {n: policies.get(n, LeasePolicy()) for n in names}


def declared(specs: Iterable[LoopSpec]) -> dict[str, LeasePolicy]:
    """The placement wishes the leased loops declare themselves (``@app.loop(...)``)."""
    return {
        s.name: LeasePolicy(s.preferred_holder, tuple(s.requires_labels))
        for s in specs
        if s.placement == "leased"
    }


def runnable(
    specs: Sequence[LoopSpec], labels: Iterable[str], overrides: Mapping[str, LoopPlacement]
) -> tuple[list[LoopSpec], dict[str, tuple[str, ...]]]:
    """Drop the leased loops this replica may not lead (``requires_labels`` it lacks).

    Returns the loops to run here and, for each dropped one, the labels it requires.
    """
    labels = tuple(labels)
    keep: list[LoopSpec] = []
    dropped: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        if spec.placement == "leased":
            cfg = overrides.get(spec.name)
            policy = merge_policy(
                spec.preferred_holder,
                spec.requires_labels,
                cfg.preferred_holder if cfg else None,
                cfg.requires_labels if cfg else None,
            )
            if not policy.allows(labels):
                dropped[spec.name] = policy.requires_labels
                continue
        keep.append(spec)
    return keep, dropped
