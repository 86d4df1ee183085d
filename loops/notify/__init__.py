"""Delivery channels and templates shared by the notification and digest loops.

``email`` and ``webhook`` know nothing about leases or the database: they make one external
call and either return or raise :class:`DeliveryError`. ``templates`` compiles the jinja2
templates once. ``dispatch`` is the fence protocol around them (claim, call, mark) for
notification_send and notification_retry.
"""

from __future__ import annotations

from leasectl.certs.notify.errors import DeliveryError
from leasectl.certs.notify.templates import Templates

__all__ = ["DeliveryError", "Templates"]
