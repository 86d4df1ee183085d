"""Webhook POSTs with http.client: JSON body, idempotency key, epoch and an HMAC signature.

Receivers dedup on ``Idempotency-Key`` (the notification id): a row re-delivered after a
failover carries the same key and the same body, so "at least once" here plus dedup there is
"exactly once" end to end. ``X-Leasectl-Signature: sha256=<hex>`` is HMAC-SHA256 of the exact
body bytes with the shared key, so the receiver can authenticate the sender; the epoch and
replica headers let it see (and log) which lease holder sent a copy.

Redirects are not followed (a 3xx is a failure): following a redirect would resend a signed
body to a host nobody configured.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ssl
from urllib.parse import urlsplit

from leasectl import __version__
from leasectl.errors import ConfigError
from loops.notify.email import check_header
from loops.notify.errors import DeliveryError
from loops.settings import WebhookSettings


def sign(key: str, body: bytes) -> str:
    """The ``X-Leasectl-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(key.encode("utf-8"), body, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self._parts = urlsplit(settings.url) if settings.url else None
        if self._parts is not None:
            if self._parts.scheme not in ("http", "https") or not self._parts.hostname:
                raise ConfigError(
                    "loops.notifications.webhook.url must be an http(s) URL with a host"
                )
            if not settings.hmac_key:
                raise ConfigError(
                    "loops.notifications.webhook.hmac_key is required when a webhook url is set: "
                    "receivers authenticate deliveries by the X-Leasectl-Signature HMAC"
                )

    @property
    def configured(self) -> bool:
        return self._parts is not None

    @property
    def safe_url(self) -> str:
        """The URL without query or credentials, for logs and errors (queries carry tokens)."""
        p = self._parts
        return f"{p.scheme}://{p.hostname}:{p.port or ''}{p.path}" if p else "<unset>"

    def post(
        self,
        body: bytes,
        *,
        idempotency_key: str,
        epoch: int,
        replica: str,
        budget: float | None = None,
    ) -> int:
        """POST ``body``; return the 2xx status.

        ``budget`` caps the timeout of each socket operation below the configured one. The
        caller passes the lease's remaining validity, so no request of ours is still in flight
        long after the lease may have moved to another replica.

        :raises DeliveryError: non-2xx, network error, or an unsafe header value (permanent).
        """
        p = self._parts
        if p is None:
            raise DeliveryError(
                "no webhook URL configured (loops.notifications.webhook.url)", permanent=True
            )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"leasectl/{__version__}",
            "Idempotency-Key": check_header("Idempotency-Key", idempotency_key),
            "X-Leasectl-Epoch": str(epoch),
            "X-Leasectl-Replica": check_header("X-Leasectl-Replica", replica),
            "X-Leasectl-Signature": sign(self.settings.hmac_key, body),
        }
        path = (p.path or "/") + (f"?{p.query}" if p.query else "")
        timeout = self.settings.timeout if budget is None else min(self.settings.timeout, budget)
        conn: http.client.HTTPConnection
        if p.scheme == "https":
            context = ssl.create_default_context(cafile=self.settings.ca_file or None)
            conn = http.client.HTTPSConnection(
                p.hostname or "", p.port, timeout=timeout, context=context
            )
        else:
            conn = http.client.HTTPConnection(p.hostname or "", p.port, timeout=timeout)
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            snippet = resp.read(300)
        except (OSError, http.client.HTTPException) as exc:
            raise DeliveryError(f"webhook POST {self.safe_url}: {exc!r}") from exc
        finally:
            conn.close()
        if not 200 <= resp.status < 300:
            raise DeliveryError(
                f"webhook POST {self.safe_url} returned HTTP {resp.status}: "
                f"{snippet.decode('utf-8', 'replace')!r}"
            )
        return resp.status
