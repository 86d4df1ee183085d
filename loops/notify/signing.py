"""The webhook signature: ``sha256=<hex>``, an HMAC-SHA256 of the exact body bytes.

Written once: the sender (:mod:`loops.notify.webhook`) signs with it and every receiver in
the repository (the demo's and the drill's, in ``leasectl.tools``) verifies with it, so the
two sides cannot drift apart.
"""

from __future__ import annotations

import hashlib
import hmac

#: The header that carries the signature.
HEADER = "X-Leasectl-Signature"


def _key_bytes(key: str | bytes) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else key


def sign(key: str | bytes, body: bytes) -> str:
    """The ``X-Leasectl-Signature`` value for ``body`` under ``key``."""
    return "sha256=" + hmac.new(_key_bytes(key), body, hashlib.sha256).hexdigest()


def verify(key: str | bytes, body: bytes, header: str | None) -> bool:
    """True when ``header`` is the signature of ``body`` (constant-time comparison)."""
    return header is not None and hmac.compare_digest(sign(key, body), header.strip())
