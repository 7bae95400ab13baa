"""SSRF-safe media fetching (deployments/media_fetch.py): forbidden addresses, the allow lists,
redirects checked again, the checked address connected to, size / time / status limits.

Named `test_serve_media_fetch` beside the batch job's `pipelines/media_fetch.py` tests."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from serve_support import MediaServer, png_bytes, slow_route

from deployments.config import MediaPolicy
from deployments.media_fetch import FetchRefused, SafeMediaFetcher, forbidden_reason, host_allowed


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------------------ SSRF checks
@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.9.9.9", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
        "100.100.100.200", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fe80::1",
        "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::", "::",
    ],
)  # fmt: skip
def test_forbidden_addresses(address):
    assert forbidden_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses_allowed(address):
    assert forbidden_reason(ipaddress.ip_address(address)) is None


def test_allowed_networks_exempt_only_themselves():
    networks = (ipaddress.ip_network("127.0.0.2/32"),)
    assert forbidden_reason(ipaddress.ip_address("127.0.0.2"), networks) is None
    assert forbidden_reason(ipaddress.ip_address("127.0.0.1"), networks) is not None


def test_host_allow_list_patterns():
    patterns = ("media.example.com", "*.cdn.example.org", "10.0.0.5")
    assert host_allowed("media.example.com", patterns)
    assert host_allowed("a.b.cdn.example.org", patterns)
    assert not host_allowed("cdn.example.org", patterns)  # '*.' means subdomains only
    assert not host_allowed("evilcdn.example.org", patterns)
    assert not host_allowed("media.example.com.evil.net", patterns)
    assert host_allowed("10.0.0.5", patterns)
    assert host_allowed("anything.net", ("*",))


@pytest.fixture
def media_server(recorder):
    image = png_bytes()
    server = MediaServer(
        {
            "/img.png": (200, {"Content-Type": "image/png"}, image),
            "/to-img": (302, {"Location": "/img.png"}, b""),
            "/to-loopback": (302, {"Location": f"{recorder.url}/secret"}, b""),
            "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
            "/to-file": (302, {"Location": "file:///etc/passwd"}, b""),
            "/loop": (302, {"Location": "/loop"}, b""),
            "/big": (200, {}, b"x" * 5000),
            "/big-undeclared": (200, {"X-No-Length": "1"}, b"x" * 5000),  # read until close
            "/slow": slow_route(3.0),
            "/missing": (404, {}, b""),
        },
        host="127.0.0.2",
    )
    server.image = image
    yield server
    server.close()


def _fetcher(resolver=None, **overrides) -> SafeMediaFetcher:
    policy = {
        "allow_url_fetch": True,
        "url_allowed_hosts": ("*",),
        "url_allowed_networks": ("127.0.0.2/32",),  # the test media server only
        "max_media_bytes": 4096,
        "url_fetch_timeout_s": 1.0,
        "url_max_redirects": 3,
    }
    policy.update(overrides)
    return SafeMediaFetcher(MediaPolicy(**policy), resolver=resolver)


def _fetch(fetcher: SafeMediaFetcher, url: str) -> bytes:
    async def go():
        try:
            return await fetcher.fetch(url)
        finally:
            await fetcher.aclose()

    return run(go())


def test_fetch_allowed_url_and_redirect(media_server):
    assert _fetch(_fetcher(), media_server.url("/img.png")) == media_server.image
    assert _fetch(_fetcher(), media_server.url("/to-img")) == media_server.image


@pytest.mark.parametrize(
    "make_url",
    [
        lambda rec, srv: f"{rec.url}/direct",  # loopback literal
        lambda rec, srv: f"http://localhost:{rec.port}/by-name",  # a name resolving to loopback
        lambda rec, srv: f"http://2130706433:{rec.port}/decimal",  # 127.0.0.1 spelt as an integer
        lambda rec, srv: f"http://[::ffff:127.0.0.1]:{rec.port}/mapped",
        lambda rec, srv: srv.url("/to-loopback"),  # allowed host redirecting to loopback
    ],
    ids=["literal", "localhost", "decimal", "v4-mapped", "redirect"],
)
def test_ssrf_to_loopback_refused_without_connecting(media_server, recorder, make_url):
    with pytest.raises(FetchRefused) as info:
        _fetch(_fetcher(), make_url(recorder, media_server))
    assert info.value.code == "media_url_forbidden"
    assert recorder.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x.png",
        "http://192.168.0.10/x.png",
        "http://[fd00:ec2::254]/latest",
        "file:///etc/passwd",
        "ftp://example.com/x.png",
        "http://user:pw@example.com/x.png",
        "http:///no-host",
    ],
)
def test_forbidden_urls_refused_before_any_connection(url):
    resolved: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return [host.strip("[]")]

    with pytest.raises(FetchRefused) as info:
        _fetch(_fetcher(resolver=resolver), url)
    assert info.value.code == "media_url_forbidden"


def test_redirect_targets_are_rechecked(media_server, recorder):
    for path in ("/to-metadata", "/to-file"):
        with pytest.raises(FetchRefused) as info:
            _fetch(_fetcher(), media_server.url(path))
        assert info.value.code == "media_url_forbidden"
    with pytest.raises(FetchRefused, match="redirects"):
        _fetch(_fetcher(), media_server.url("/loop"))


def test_host_not_on_allow_list_is_not_even_resolved(media_server):
    resolved: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.2"]

    with pytest.raises(FetchRefused, match="allow-list"):
        _fetch(
            _fetcher(url_allowed_hosts=("media.example.com",), resolver=resolver),
            "http://other.example.com/x",
        )
    assert resolved == []


def test_any_private_answer_refuses_the_host():
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.7"]  # one public, one private (rebinding-style answer)

    with pytest.raises(FetchRefused, match="10.0.0.7"):
        _fetch(_fetcher(resolver=resolver), "http://mixed.example.com/x.png")


def test_connects_to_the_checked_address_with_the_original_host_header(media_server):
    async def resolver(host: str, port: int) -> list[str]:
        assert host == "media.test"
        return ["127.0.0.2"]

    fetcher = _fetcher(url_allowed_hosts=("media.test",), resolver=resolver)
    assert _fetch(fetcher, f"http://media.test:{media_server.port}/img.png") == media_server.image
    assert media_server.requests[-1] == ("/img.png", f"media.test:{media_server.port}")


def test_fetch_limits_size_time_and_status(media_server):
    with pytest.raises(FetchRefused) as info:
        _fetch(_fetcher(), media_server.url("/big"))
    assert (info.value.code, info.value.status) == ("media_too_large", 413)
    with pytest.raises(FetchRefused) as info:
        _fetch(
            _fetcher(), media_server.url("/big-undeclared")
        )  # no Content-Length: counted while read
    assert (info.value.code, info.value.status) == ("media_too_large", 413)
    with pytest.raises(FetchRefused) as info:
        _fetch(_fetcher(url_fetch_timeout_s=0.5), media_server.url("/slow"))
    assert info.value.code == "media_fetch_timeout"
    with pytest.raises(FetchRefused, match="HTTP 404"):
        _fetch(_fetcher(), media_server.url("/missing"))
