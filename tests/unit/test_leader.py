"""Declaring leases without loops (leasectl.leader through App): what is refused, and why."""

from __future__ import annotations

import pytest

from leasectl import App, ConfigError, LeasectlError, LeaseHandle, TickContext


def _app() -> App:
    app = App(dsn="dbname=unused")
    app.configure(metrics_listen="")
    return app


def test_a_name_is_one_thing() -> None:
    app = _app()
    app.lease("orders")

    @app.leader()
    def consumer(lease: LeaseHandle) -> None:
        lease.done.wait()

    with pytest.raises(ConfigError, match="declared twice"):
        app.leader("orders")(consumer)
    with pytest.raises(ConfigError, match="belongs to a @leader function"):
        app.lease("consumer")
    assert app.lease("orders").name == "orders"  # the same declaration, used again
    assert [(d.name, d.leader is not None) for d in app.leases()] == [
        ("orders", False),
        ("consumer", True),
    ]


def test_a_lease_named_like_a_loop_is_refused() -> None:
    app = _app()

    @app.loop(every=5)
    def report(ctx: TickContext) -> None:
        pass

    with pytest.raises(ConfigError, match="'report': a loop has the same name"):
        app.lease("report")
    other = _app()
    other.lease("report")
    other.loop(every=5)(report)  # declared after the lease: found when it starts
    with pytest.raises(ConfigError, match="report: a loop has the same name"):
        other.start()
    assert not other.running


def test_blocks_need_a_running_app_and_names_declared_before_start() -> None:
    app = _app()
    block = app.lease("orders")
    with pytest.raises(LeasectlError, match="needs a running App"), block:
        pass
    assert not app.is_leader("orders")
