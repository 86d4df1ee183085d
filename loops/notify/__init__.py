"""Delivery channels and templates shared by the notification and digest loops.

The channels know nothing about leases or the database: they make one external call and
either return or raise :class:`DeliveryError`. The loops own the fence protocol around them.
"""

from __future__ import annotations

from loops.notify.errors import DeliveryError
from loops.notify.templates import Templates

__all__ = ["DeliveryError", "Templates"]
