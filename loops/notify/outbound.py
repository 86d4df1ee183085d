"""Outbound HTTP for webhooks and chat channels: SSRF-checked, pinned to the checked address.

A notification URL comes from configuration, but the name in it is resolved at delivery
time, and an attacker who controls that name's DNS (or a typo pointing at an internal name)
could make a replica POST alerts, signatures and API keys to ``169.254.169.254`` or an
internal admin port. So, per request:

1. resolve the host **once** (``getaddrinfo``);
2. refuse the delivery (:class:`DestinationRefused`, permanent) if **any** address is
   loopback, private, link-local (the cloud metadata service), CGNAT, multicast, reserved or
   unspecified, also when embedded in an IPv6 form (``::ffff:a.b.c.d``, NAT64, 6to4,
   Teredo), unless it lies in ``loops.notifications.allow_private_networks``;
3. connect to a checked address, never to the name again (no second lookup a rebinding DNS
   server could answer differently), sending the original ``Host`` header, and for https
   verifying the certificate against the original name (SNI + hostname check);
4. never follow redirects (``http.client`` does not): a 3xx is a failure.

URLs of chat channels carry their credential in the path (Slack, Teams), so error messages
use :meth:`Target.safe` which drops the path of secret URLs, the query and any userinfo.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from leasectl.certs.notify.errors import DeliveryError
from leasectl.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class DestinationRefused(DeliveryError):
    """The URL resolves to an address outside what notifications may reach (SSRF guard).

    Always permanent: retrying resolves the same name to the same kind of address, and an
    operator has to either fix the URL or list the network in ``allow_private_networks``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


def parse_networks(cidrs: Iterable[str], setting: str) -> tuple[IPNetwork, ...]:
    """``allow_private_networks`` as networks; :class:`ConfigError` naming every bad entry."""
    out: list[IPNetwork] = []
    problems: list[str] = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(str(cidr).strip(), strict=False))
        except ValueError as exc:
            problems.append(f"{setting}: {cidr!r} is not a CIDR network ({exc})")
    if problems:
        raise ConfigError(problems)
    return tuple(out)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form tunnels to, if any (mapped, NAT64, 6to4, Teredo)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be a notification destination, or None if it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            reason = forbidden_reason(inner)
            return f"{reason}, embedded in {ip}" if reason else None
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local (cloud metadata service range)"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not globally routable"),
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_addresses(
    host: str,
    port: int,
    allow: Sequence[IPNetwork],
    resolver: Resolver = system_resolver,
    *,
    what: str = "notification URL",
) -> list[IPAddress]:
    """Resolve ``host`` once and return its addresses if every one of them may be reached.

    :raises DestinationRefused: an address is forbidden and not in ``allow``.
    :raises DeliveryError: the name does not resolve (retryable: DNS may recover).
    """
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            found = resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise DeliveryError(f"{what}: cannot resolve {host!r}: {exc}") from exc
        addresses = []
        for text in found:
            try:
                addresses.append(ipaddress.ip_address(str(text).split("%", 1)[0]))
            except ValueError:
                raise DestinationRefused(
                    f"{what}: {host!r} resolved to {text!r}, which is not an IP address"
                ) from None
        if not addresses:
            raise DeliveryError(f"{what}: {host!r} resolved to no address")
    for ip in addresses:
        if any(ip.version == net.version and ip in net for net in allow):
            continue
        reason = forbidden_reason(ip)
        if reason is not None:
            named = "" if literal is not None else f"{host!r} resolves to "
            raise DestinationRefused(
                f"{what} refused: {named}{ip} ({reason}); list its network in "
                "loops.notifications.allow_private_networks to allow it"
            )
    return addresses


@dataclass(frozen=True)
class Target:
    """A parsed http(s) URL. ``secret_path``: the path is a credential (chat webhooks)."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    secret_path: bool = False

    @classmethod
    def parse(cls, url: str, setting: str, *, secret_path: bool = False) -> Target:
        """:raises ConfigError: not an http(s) URL with a host (the URL itself is not shown)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ConfigError(f"{setting} is not a valid URL (value not shown)") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{setting} must be an http(s) URL with a host (value not shown)")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname, port or default, path, secret_path)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def safe(self) -> str:
        """For logs and errors: no query (tokens), and no path when the path is the secret."""
        path = "/<redacted>" if self.secret_path else self.path.split("?", 1)[0]
        return f"{self.scheme}://{self.host_header}{path}"


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to checked addresses only; the request still names the original host."""

    def __init__(self, addresses: Sequence[IPAddress], port: int, timeout: float) -> None:
        super().__init__(str(addresses[0]), port, timeout=timeout)
        self._addresses = list(addresses)

    def _open(self) -> socket.socket:
        last: OSError | None = None
        for ip in self._addresses:
            try:
                return socket.create_connection((str(ip), self.port), self.timeout)
            except OSError as exc:
                last = exc
        assert last is not None  # noqa: S101 - narrows a type for mypy; the invariant holds by construction
        raise last

    def connect(self) -> None:
        self.sock = self._open()


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """TLS to a checked address, with SNI and certificate verification for the URL's name."""

    def __init__(
        self,
        addresses: Sequence[IPAddress],
        port: int,
        timeout: float,
        *,
        server_hostname: str,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(addresses, port, timeout)
        self._server_hostname = server_hostname
        self._ssl_context = context

    def connect(self) -> None:
        raw = self._open()
        try:
            self.sock = self._ssl_context.wrap_socket(raw, server_hostname=self._server_hostname)
        except BaseException:
            raw.close()
            raise


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes  # the first few hundred bytes, for error messages


def post(
    target: Target,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float,
    allow: Sequence[IPNetwork],
    ca_file: str = "",
    resolver: Resolver = system_resolver,
    what: str = "webhook",
) -> Response:
    """POST ``body`` to ``target`` after the SSRF check; return the status, whatever it is.

    :raises DestinationRefused: the destination is not allowed (permanent).
    :raises DeliveryError: DNS, connection, TLS or protocol failure (retryable).
    """
    addresses = check_addresses(target.host, target.port, allow, resolver, what=what)
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        context = ssl.create_default_context(cafile=ca_file or None)
        conn = _PinnedHTTPSConnection(
            addresses, target.port, timeout, server_hostname=target.host, context=context
        )
    else:
        conn = _PinnedHTTPConnection(addresses, target.port, timeout)
    sent: dict[str, Any] = {"Host": target.host_header, **headers}
    try:
        conn.request("POST", target.path, body=body, headers=sent)
        resp = conn.getresponse()
        snippet = resp.read(300)
    except (OSError, http.client.HTTPException) as exc:
        # repr of these never includes the request path: no token leaks from here.
        raise DeliveryError(f"{what} POST {target.safe()}: {exc!r}") from exc
    finally:
        conn.close()
    return Response(resp.status, snippet)
