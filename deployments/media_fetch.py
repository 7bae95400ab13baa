"""Fetch http(s) media URLs without becoming a proxy into the cluster's network (SSRF).

Every hop (the URL and each redirect) is checked before any connection is made:
- scheme http or https only, no credentials in the URL;
- the host name is on the allow-list;
- the name is resolved here and EVERY address it resolves to must be public: loopback, private,
  link-local (cloud metadata at 169.254.169.254 / fd00:ec2::254), shared (100.64/10), multicast,
  reserved and unspecified addresses are refused, also when wrapped in IPv6 (::ffff:a.b.c.d,
  6to4, Teredo), unless the operator listed the network in `url_allowed_networks`;
- the connection goes to the checked address itself (the URL is rewritten to the IP, with the
  original Host header and TLS SNI/certificate name), so a second DNS answer cannot redirect it
  (DNS rebinding). Proxies from the environment are ignored for the same reason.
Redirects are followed by hand, each re-checked; the body is read up to a byte limit; one
deadline covers the whole fetch.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from qwen3_embed.errors import Qwen3EmbedError

from .bounded_read import read_bounded
from .config import MediaPolicy

_REDIRECTS = {301, 302, 303, 307, 308}
_DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]


class FetchRefused(Qwen3EmbedError):
    """A media URL refused by the policy, or a fetch that failed. `status` is the HTTP answer."""

    def __init__(self, message: str, code: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


def forbidden_reason(ip: IPAddress, allowed_networks: tuple[IPNetwork, ...] = ()) -> str | None:
    """Why a connection to `ip` is refused, or None when it is allowed."""
    if any(ip.version == net.version and ip in net for net in allowed_networks):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address wrapped in IPv6 reaches the IPv4 host: judge the inner address.
        for inner in (ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None):
            if inner is not None:
                return forbidden_reason(inner, allowed_networks)
    checks = (
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address (cloud metadata services live there)"),
        (ip.is_private, "a private address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_unspecified, "an unspecified address"),
        (not ip.is_global, "not a globally routable address"),
    )
    for failed, reason in checks:
        if failed:
            return reason
    return None


def host_allowed(host: str, patterns: tuple[str, ...]) -> bool:
    """`host` (lower-case, no trailing dot) against 'name', '*.domain' and '*' patterns."""
    for pattern in patterns:
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
            return True
        if _same_ip(pattern.strip("[]"), host):
            return True
    return False


def _same_ip(left: str, right: str) -> bool:
    try:
        return ipaddress.ip_address(left) == ipaddress.ip_address(right)
    except ValueError:
        return False


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host` (IP literals resolve to themselves)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]).split("%", 1)[0] for info in infos]  # drop IPv6 zone ids


def safe_origin(url: str) -> str:
    """scheme://host[:port] only: error messages never repeat paths or query strings (signed URLs
    carry secrets there)."""
    parts = urlsplit(url)
    return (
        f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        if parts.scheme and parts.netloc
        else "<url>"
    )


@dataclass(frozen=True)
class _Target:
    """A checked hop: where to connect and what to tell the server."""

    connect_url: str  # the URL with the host replaced by the checked IP
    host_header: str
    sni_hostname: str | None  # for https: the name the certificate must carry


class SafeMediaFetcher:
    def __init__(self, policy: MediaPolicy, resolver: Resolver | None = None):
        if not policy.allow_url_fetch:
            raise ValueError("SafeMediaFetcher needs a policy with allow_url_fetch=True")
        self.policy = policy
        self._resolver = resolver or resolve_host
        self._networks = tuple(
            ipaddress.ip_network(net, strict=False) for net in policy.url_allowed_networks
        )
        self._client = httpx.AsyncClient(
            follow_redirects=False,  # followed by hand, each hop re-checked
            trust_env=False,  # an HTTP(S)_PROXY from the environment would bypass the address check
            timeout=httpx.Timeout(policy.url_fetch_timeout_s),
            # No pooled connections: a TLS connection opened for one name must never carry a
            # request for another name that resolved to the same address.
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": "qwen3-embed-media-fetcher", "Accept": "image/*, video/*"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        """The body of `url` (redirects followed), or FetchRefused."""
        try:
            return await asyncio.wait_for(self._fetch(url), self.policy.url_fetch_timeout_s)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise FetchRefused(
                f"fetching {safe_origin(url)} took longer than {self.policy.url_fetch_timeout_s}s",
                "media_fetch_timeout",
            ) from None

    async def _fetch(self, url: str) -> bytes:
        current = url
        for _ in range(self.policy.url_max_redirects + 1):
            target = await self.check_url(current)
            extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
            try:
                async with self._client.stream(
                    "GET",
                    target.connect_url,
                    headers={"Host": target.host_header},
                    extensions=extensions,
                ) as response:
                    if response.status_code in _REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise FetchRefused(
                                f"{safe_origin(current)} redirected without a Location",
                                "media_fetch_failed",
                            )
                        current = urljoin(current, location)
                        continue
                    if response.status_code != 200:
                        raise FetchRefused(
                            f"{safe_origin(current)} answered HTTP {response.status_code}",
                            "media_fetch_failed",
                        )
                    return await self._read_limited(response, current)
            except httpx.TimeoutException:
                raise
            except httpx.HTTPError as error:
                raise FetchRefused(
                    f"fetching {safe_origin(current)} failed: {type(error).__name__}",
                    "media_fetch_failed",
                ) from None
        raise FetchRefused(
            f"{safe_origin(url)}: more than {self.policy.url_max_redirects} redirects",
            "media_fetch_failed",
        )

    async def _read_limited(self, response: httpx.Response, url: str) -> bytes:
        limit = self.policy.max_media_bytes
        too_large = FetchRefused(
            f"the media at {safe_origin(url)} is larger than the limit of {limit} bytes",
            "media_too_large",
            413,
        )
        declared = response.headers.get("content-length", "")
        # aiter_bytes yields decoded (decompressed) bytes: the limit holds against gzip bombs too.
        return await read_bounded(response.aiter_bytes(), declared, limit, too_large)

    async def check_url(self, url: str) -> _Target:
        """Everything about one hop that is decided before connecting; FetchRefused otherwise."""
        refused = "media_url_forbidden"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise FetchRefused("the media URL is malformed", refused) from None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise FetchRefused(
                f"media URLs must be http(s), got scheme {scheme or '(none)'!r}", refused
            )
        if parts.username is not None or parts.password is not None:
            raise FetchRefused("media URLs must not carry credentials", refused)
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise FetchRefused("the media URL has no host", refused)
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise FetchRefused("the media URL's host name is not valid", refused) from None
        origin = safe_origin(url)
        if not host_allowed(host, self.policy.url_allowed_hosts):
            raise FetchRefused(f"{origin}: host {host!r} is not on the allow-list", refused)
        port = port or _DEFAULT_PORTS[scheme]
        try:
            addresses = await self._resolver(host, port)
        except OSError:
            raise FetchRefused(
                f"{origin}: host {host!r} does not resolve", "media_fetch_failed"
            ) from None
        if not addresses:
            raise FetchRefused(f"{origin}: host {host!r} does not resolve", "media_fetch_failed")
        checked: list[IPAddress] = []
        for text in addresses:
            ip = ipaddress.ip_address(text)
            reason = forbidden_reason(ip, self._networks)
            if reason is not None:
                # One bad address refuses the host: which address a client would get is not ours to bet on.
                raise FetchRefused(f"{origin}: {host!r} resolves to {ip}, {reason}", refused)
            checked.append(ip)
        ip = checked[0]
        literal = f"[{ip}]" if ip.version == 6 else str(ip)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = port == _DEFAULT_PORTS[scheme]
        host_for_header = f"[{host}]" if ":" in host else host
        return _Target(
            connect_url=f"{scheme}://{literal}:{port}{path}",
            host_header=host_for_header if default_port else f"{host_for_header}:{port}",
            sni_hostname=host if scheme == "https" and not _is_ip(host) else None,
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False
