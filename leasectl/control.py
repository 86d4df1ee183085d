"""The control channel's messages (``leasectl_control``), typed, encoded and parsed here only.

Every lock session LISTENs on ``leasectl_control``. Four kinds of sender write to it: a
stopping replica and a watcher (``replica_gone``), a standby's poll that sees a crashed holder
(``replica_gone``, built in PL/pgSQL by ``leasectl_standby_poll``, migration 0012: keep its
fields in step with :class:`ReplicaGone`), a rebalance or a wedged tick's release
(``hand_over``), ``leasectl step-down`` (``step_down``) and ``leasectl loop pause | resume |
trigger`` (``loop_control``: re-read the loop pauses and triggers, :mod:`leasectl.loop_control`).
:func:`parse` turns a payload into one of the classes below, or None for anything it does
not know (an older or newer version's message is ignored, never an error).
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaGone:
    """``replica``'s lock session ended (a watcher saw it, a standby saw its lease orphaned)
    or it is stopping: drop it from the placement view and campaign for its leases now."""

    replica: str
    why: str = ""


@dataclass(frozen=True)
class HandOver:
    """``leases`` were released for ``to``: only it tries them for a while (a reservation)."""

    leases: tuple[str, ...]
    to: str
    sender: str = ""


@dataclass(frozen=True)
class StepDown:
    """``leasectl step-down``: release ``lease`` (None: every lease of ``replica``, or of
    every replica) and stay away for ``cooldown`` seconds (None: the replica's default)."""

    lease: str | None = None
    replica: str | None = None
    cooldown: float | None = None


@dataclass(frozen=True)
class LoopControlChanged:
    """A loop's pause or trigger rows changed (``leasectl loop ...``): re-read them now. The
    rows are the truth; this only says when to look (:mod:`leasectl.loop_control`)."""

    loop: str
    event: str = ""


Message = ReplicaGone | HandOver | StepDown | LoopControlChanged


def encode(msg: Message) -> str:
    """The JSON payload of ``msg`` (what :func:`parse` reads back)."""
    if isinstance(msg, ReplicaGone):
        return json.dumps({"action": "replica_gone", "replica": msg.replica, "why": msg.why})
    if isinstance(msg, HandOver):
        return json.dumps(
            {"action": "hand_over", "leases": list(msg.leases), "to": msg.to, "from": msg.sender}
        )
    if isinstance(msg, LoopControlChanged):
        return json.dumps({"action": "loop_control", "loop": msg.loop, "event": msg.event})
    return json.dumps(
        {
            "action": "step_down",
            "lease": msg.lease,
            "replica": msg.replica,
            "cooldown": msg.cooldown,
        }
    )


def parse(payload: str) -> Message | None:
    """The message in ``payload``; None when it is not one (malformed, or unknown)."""
    try:
        raw = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    action = raw.get("action")
    if action == "replica_gone":
        replica = raw.get("replica")
        return ReplicaGone(replica, str(raw.get("why") or "")) if isinstance(replica, str) else None
    if action == "hand_over":
        to, leases = raw.get("to"), raw.get("leases")
        if not isinstance(to, str) or not isinstance(leases, list):
            return None
        names = tuple(n for n in leases if isinstance(n, str))
        return HandOver(names, to, str(raw.get("from") or ""))
    if action == "step_down":
        lease, replica, cooldown = raw.get("lease"), raw.get("replica"), raw.get("cooldown")
        return StepDown(
            lease if isinstance(lease, str) and lease else None,
            replica if isinstance(replica, str) and replica else None,
            float(cooldown) if isinstance(cooldown, int | float) and cooldown else None,
        )
    if action == "loop_control":
        loop = raw.get("loop")
        return (
            LoopControlChanged(loop, str(raw.get("event") or "")) if isinstance(loop, str) else None
        )
    return None
