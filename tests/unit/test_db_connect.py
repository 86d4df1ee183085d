"""connect_kwargs: the one place connect parameters are decided (issue 10)."""

from __future__ import annotations

from leasectl.db import connect_kwargs, is_multi_host
from leasectl.settings import DatabaseSettings

DB = DatabaseSettings(connect_timeout=3.0)
MULTI = "host=10.0.0.1,10.0.0.2 port=5432,5433 dbname=app user=u"


def test_multi_host_dsn_insists_on_a_writable_server() -> None:
    assert is_multi_host(MULTI)
    assert connect_kwargs(MULTI, DB, "x")["target_session_attrs"] == "read-write"


def test_single_host_dsn_is_left_as_written_except_for_the_lock_connection() -> None:
    single = "host=db dbname=app"
    assert not is_multi_host(single)
    assert "target_session_attrs" not in connect_kwargs(single, DB, "x")
    assert connect_kwargs(single, DB, "x", primary_only=True)["target_session_attrs"] == (
        "read-write"
    )


def test_an_explicit_attribute_in_the_dsn_wins_unless_it_allows_a_standby_for_locks() -> None:
    given = MULTI + " target_session_attrs=primary"
    assert "target_session_attrs" not in connect_kwargs(given, DB, "x")
    assert "target_session_attrs" not in connect_kwargs(given, DB, "x", primary_only=True)
    anyone = MULTI + " target_session_attrs=any"
    assert "target_session_attrs" not in connect_kwargs(anyone, DB, "x")
    assert connect_kwargs(anyone, DB, "x", primary_only=True)["target_session_attrs"] == (
        "read-write"
    )


def test_hostaddr_lists_count_and_timeouts_are_at_least_one_second() -> None:
    assert is_multi_host("hostaddr=10.0.0.1,10.0.0.2")
    kw = connect_kwargs("host=db", DatabaseSettings(connect_timeout=0.2), "leasectl-status")
    assert kw == {"application_name": "leasectl-status", "connect_timeout": 1}
