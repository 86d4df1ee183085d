"""Two lease names that share a 32-bit key are refused across processes, not only in one."""

from __future__ import annotations

import pytest

from leasectl.errors import KeyCollision
from leasectl.keys import int4_hash
from leasectl.lease_manager import LeaseManager
from leasectl.settings import CoreSettings

FIRST, SECOND = "loop-38791", "loop-104806"  # found by search: same sha256 int4 prefix


def test_collision_with_a_name_another_replica_holds_is_refused(dsn: str) -> None:
    assert int4_hash(FIRST) == int4_hash(SECOND)
    a = LeaseManager("kc-a", [FIRST], CoreSettings(), dsn=dsn)
    a.start()
    try:
        a.wait_for(FIRST, timeout=20)
        b = LeaseManager("kc-b", ["other", SECOND], CoreSettings(), dsn=dsn)
        with pytest.raises(KeyCollision) as refused:
            b.start()
        assert set(refused.value.names) == {FIRST, SECOND}
        assert str(refused.value.key) in str(refused.value)
    finally:
        a.stop()
