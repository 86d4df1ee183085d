"""Advisory keys: stable hashing, the two-int4 form, collisions refused by name."""

from __future__ import annotations

import pytest

from leasectl.errors import KeyCollision
from leasectl.keys import KeyRegistry, as_oid, from_oid, int4_hash, namespace_for


def test_hash_is_stable_across_processes_and_versions() -> None:
    # SHA-256 based, so these values must never change: they are keys held in production.
    assert int4_hash("leasectl") == 1069322182
    assert int4_hash("digest") == 200569993
    assert int4_hash("leasectl:migrations") == -550425570


@pytest.mark.parametrize("name", ["", "a", "ünïcödé", "x" * 10_000])
def test_hash_fits_a_postgres_integer(name: str) -> None:
    assert -(2**31) <= int4_hash(name) < 2**31


def test_namespace_from_seed_or_integer() -> None:
    assert namespace_for() == int4_hash("leasectl")
    assert namespace_for("other") == int4_hash("other")
    assert namespace_for(42) == 42
    assert namespace_for(-(2**31)) == -(2**31)
    with pytest.raises(ValueError, match="does not fit"):
        namespace_for(2**31)


@pytest.mark.parametrize("value", [0, 1, -1, 2**31 - 1, -(2**31), 1069322182, -550425570])
def test_oid_round_trip(value: int) -> None:
    oid = as_oid(value)
    assert 0 <= oid < 2**32
    assert from_oid(oid) == value


def test_registry_refuses_a_collision_naming_both() -> None:
    # Two names found by a birthday search; they share one 32-bit key.
    first, second = "lease-88323", "lease-98519"
    assert int4_hash(first) == int4_hash(second) == -800813910
    reg = KeyRegistry()
    assert reg.register(first) == -800813910
    assert reg.register(first) == -800813910  # idempotent for the same name
    with pytest.raises(KeyCollision) as info:
        reg.register(second)
    assert info.value.names == (first, second)
    assert info.value.key == -800813910
    assert first in str(info.value) and second in str(info.value)
    assert reg.names() == [first]
    assert reg.name(-800813910) == first
    assert reg.name(12345) is None
