"""Webhook POSTs with http.client: JSON body, idempotency key, epoch and an HMAC signature.

Receivers dedup on ``Idempotency-Key`` (the notification id): a row re-delivered after a
failover carries the same key and the same body, so "at least once" here plus dedup there is
"exactly once" end to end. ``X-Leasectl-Signature: sha256=<hex>`` is HMAC-SHA256 of the exact
body bytes with the shared key, so the receiver can authenticate the sender; the epoch and
replica headers let it see (and log) which lease holder sent a copy.

Redirects are not followed (a 3xx is a failure): following a redirect would resend a signed
body to a host nobody configured. The POST goes through :mod:`loops.notify.outbound`: a URL
that resolves to a loopback, private, link-local or metadata address is refused unless its
network is in ``loops.notifications.allow_private_networks``, and the connection goes to the
address that was checked.
"""

from __future__ import annotations

from collections.abc import Sequence

from leasectl._version import __version__
from leasectl.certs.notify.email import check_header
from leasectl.certs.notify.errors import DeliveryError
from leasectl.certs.notify.outbound import IPNetwork, Resolver, Target, post, system_resolver
from leasectl.certs.notify.signing import HEADER, sign
from leasectl.certs.settings import WebhookSettings
from leasectl.errors import ConfigError


class WebhookSender:
    def __init__(
        self,
        settings: WebhookSettings,
        allow: Sequence[IPNetwork] = (),
        resolver: Resolver = system_resolver,
    ) -> None:
        self.settings = settings
        self.allow = tuple(allow)
        self.resolver = resolver
        self._target = (
            Target.parse(settings.url, "loops.notifications.webhook.url") if settings.url else None
        )
        if self._target is not None and not settings.hmac_key:
            raise ConfigError(
                "loops.notifications.webhook.hmac_key is required when a webhook url is set: "
                "receivers authenticate deliveries by the X-Leasectl-Signature HMAC"
            )

    @property
    def configured(self) -> bool:
        return self._target is not None

    @property
    def target(self) -> Target | None:
        """Where deliveries go (its host scopes the ``webhook`` rate limit)."""
        return self._target

    @property
    def safe_url(self) -> str:
        """The URL without query or credentials, for logs and errors (queries carry tokens)."""
        return self._target.safe() if self._target is not None else "<unset>"

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

        :raises DeliveryError: non-2xx, network error, or an unsafe header value (permanent);
            :class:`~loops.notify.outbound.DestinationRefused` (permanent) for a URL that
            resolves to an address notifications may not reach.
        """
        target = self._target
        if target is None:
            raise DeliveryError(
                "no webhook URL configured (loops.notifications.webhook.url)", permanent=True
            )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"leasectl/{__version__}",
            "Idempotency-Key": check_header("Idempotency-Key", idempotency_key),
            "X-Leasectl-Epoch": str(epoch),
            "X-Leasectl-Replica": check_header("X-Leasectl-Replica", replica),
            HEADER: sign(self.settings.hmac_key, body),
        }
        timeout = self.settings.timeout if budget is None else min(self.settings.timeout, budget)
        resp = post(
            target,
            body,
            headers,
            timeout=timeout,
            allow=self.allow,
            ca_file=self.settings.ca_file,
            resolver=self.resolver,
            what="webhook",
        )
        if not 200 <= resp.status < 300:
            raise DeliveryError(
                f"webhook POST {self.safe_url} returned HTTP {resp.status}: "
                f"{resp.body.decode('utf-8', 'replace')!r}"
            )
        return resp.status
