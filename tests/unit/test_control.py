"""The control channel's messages: what is encoded is parsed back, anything else is None."""

from __future__ import annotations

from leasectl import control


def test_every_message_round_trips() -> None:
    for msg in (
        control.ReplicaGone("r1", "stop"),
        control.HandOver(("a", "b"), "r2", "r1"),
        control.StepDown("a", None, 5.0),
        control.StepDown(None, "r3", None),
        control.LoopControlChanged("mailer", "loop_paused"),
        control.LoopControlChanged("*", ""),
    ):
        assert control.parse(control.encode(msg)) == msg


def test_the_standby_polls_plpgsql_message_parses() -> None:
    """leasectl_standby_poll builds its replica_gone with json_build_object (' : ')."""
    payload = '{"action" : "replica_gone", "replica" : "r4", "why" : "crash seen by a standby"}'
    assert control.parse(payload) == control.ReplicaGone("r4", "crash seen by a standby")


def test_unknown_or_malformed_payloads_are_ignored() -> None:
    for payload in ("{", "[]", '{"action": "reboot"}', '{"action": "hand_over", "to": 3}', "x"):
        assert control.parse(payload) is None
