"""The one error a channel raises."""

from __future__ import annotations


class DeliveryError(Exception):
    """An external delivery failed.

    ``permanent`` means retrying cannot help (a header with CR/LF, an unconfigured channel,
    a template that does not render, every recipient refused with a 5xx): the row goes
    straight to ``dead`` with the message as ``last_error`` instead of burning the backoff.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        self.permanent = permanent
        super().__init__(message)
