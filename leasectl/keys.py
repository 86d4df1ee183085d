"""Advisory lock keys: ``(namespace, hash(name))`` in PostgreSQL's two-int4 form.

The two-int form lives in a different key space from ``pg_advisory_lock(bigint)``, so
leasectl never collides with other software's bigint advisory locks on the same server.
The hash must be stable across processes and Python versions, so it is SHA-256 based,
never ``hash()``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from leasectl.errors import KeyCollision

DEFAULT_NAMESPACE_SEED = "leasectl"
MIGRATIONS_LEASE = "leasectl:migrations"


def int4_hash(text: str) -> int:
    """First four bytes of SHA-256 as a signed 32-bit integer (PostgreSQL ``integer``)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big", signed=True)


def namespace_for(seed: str | int = DEFAULT_NAMESPACE_SEED) -> int:
    """The int4 namespace: an explicit integer, or the hash of a seed string."""
    if isinstance(seed, int):
        if not -(2**31) <= seed < 2**31:
            raise ValueError(f"lock namespace {seed} does not fit in a PostgreSQL integer")
        return seed
    return int4_hash(seed)


def as_oid(value: int) -> int:
    """The unsigned form ``pg_locks`` shows for an int4 key (``classid``/``objid`` are oids)."""
    return value & 0xFFFFFFFF


def from_oid(value: int) -> int:
    """Inverse of :func:`as_oid`."""
    return value - 2**32 if value >= 2**31 else value


class KeyRegistry:
    """Maps lease names to keys and refuses two names that share a key."""

    def __init__(self) -> None:
        self._by_key: dict[int, str] = {}
        self._by_name: dict[str, int] = {}

    def register(self, name: str) -> int:
        """Return the key for ``name``; raise :class:`KeyCollision` if another name has it."""
        if name in self._by_name:
            return self._by_name[name]
        key = int4_hash(name)
        other = self._by_key.get(key)
        if other is not None:
            raise KeyCollision(other, name, key)
        self._by_key[key] = name
        self._by_name[name] = key
        return key

    def key(self, name: str) -> int:
        return self._by_name[name]

    def name(self, key: int) -> str | None:
        return self._by_key.get(key)

    def names(self) -> list[str]:
        return list(self._by_name)


def find_collision(mine: Iterable[str], others: Iterable[str]) -> tuple[str, str, int] | None:
    """(a name elsewhere in the cluster, ours, the key) when two names share one advisory key:
    they would share one lock, so the second one is refused at start."""
    by_key = {int4_hash(n): n for n in mine}
    for other in others:
        ours = by_key.get(int4_hash(other))
        if ours is not None and ours != other:
            return other, ours, int4_hash(ours)
    return None
