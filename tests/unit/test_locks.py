"""D_srv: the earliest time after a holder's last packet at which the server may drop it."""

from __future__ import annotations

import pytest

from leasectl.locks import TcpBound


def _bound(idle: int, interval: int, count: int, ut: int, unix: bool = False) -> float | None:
    return TcpBound(idle, interval, count, ut, unix).d_srv


def test_defaults_give_nine_seconds() -> None:
    # idle 4 + 1 probe tick = 5 s, but TCP_USER_TIMEOUT 9 s wins: no abort before it.
    assert _bound(4, 1, 4, 9000) == 9.0


def test_without_user_timeout_all_probes_must_go_unanswered() -> None:
    assert _bound(4, 1, 4, 0) == 8.0
    assert _bound(60, 10, 6, 0) == 120.0


@pytest.mark.parametrize(
    ("idle", "interval", "ut", "expected"),
    [(10, 5, 3000, 15.0), (4, 1, 5000, 5.0), (4, 1, 5001, 5.001), (2, 2, 20000, 20.0)],
)
def test_user_timeout_aborts_at_the_first_probe_tick_past_it(
    idle: int, interval: int, ut: int, expected: float
) -> None:
    # At least one unanswered probe is needed, so never before idle + interval.
    assert _bound(idle, interval, 9, ut) == pytest.approx(expected)


def test_unix_socket_is_exempt() -> None:
    assert _bound(0, 0, 0, 0, unix=True) is None
    assert _bound(4, 1, 4, 9000, unix=True) is None


def test_kernel_default_keepalive_is_safe_but_slow() -> None:
    assert _bound(0, 0, 0, 0) == 7200 + 75 * 9
