"""web-download against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from edgesync.config import UriFilter
from edgesync.errors import BadRequest, RequestTooLarge
from edgesync.importer.download import MAX_REDIRECTS, PinnedResolver, download
from edgesync.importer.hashing import ImageDigest

MiB = 1 << 20


def sparse_content() -> bytes:
    """9 MiB + a bit: data at unaligned places, long zero runs, a trailing hole."""
    content = bytearray(9 * MiB + 100)
    content[0:64 * 1024] = os.urandom(64 * 1024)
    content[5 * MiB + 123:5 * MiB + 123 + 5000] = os.urandom(5000)
    content[6 * MiB:6 * MiB + 10] = os.urandom(10)
    return bytes(content)


@dataclass
class Server:
    base: str
    port: int
    content: bytes
    requests: list[str]

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[Server]:
    content = sparse_content()
    requests: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
        requests.append(request.path_qs)
        return await handler(request)

    async def image(request: web.Request) -> web.StreamResponse:
        return web.Response(body=content, content_type="application/octet-stream")

    async def chunked(request: web.Request) -> web.StreamResponse:
        # No Content-Length: the size is only known by counting.
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(0, len(content), 300_000):
            await response.write(content[i:i + 300_000])
        await response.write_eof()
        return response

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query["to"])

    async def chain(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        raise web.HTTPTemporaryRedirect(f"/chain/{n - 1}" if n > 0 else "/image")

    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently("/loop")

    async def no_location(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302)

    async def trickle(request: web.Request) -> web.StreamResponse:
        # A first part, then silence: for timeouts and cancellation.
        response = web.StreamResponse(headers={"Content-Length": str(len(content))})
        await response.prepare(request)
        await response.write(os.urandom(5 * MiB))
        await asyncio.sleep(30)
        return response

    async def truncated(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(2 * MiB)})
        await response.prepare(request)
        await response.write(os.urandom(MiB))
        request.transport.close()  # type: ignore[union-attr]
        return response

    app = web.Application(middlewares=[record])
    app.add_routes([
        web.get("/image", image), web.get("/chunked", chunked), web.get("/redirect", redirect),
        web.get("/chain/{n}", chain), web.get("/loop", loop), web.get("/no-location", no_location),
        web.get("/trickle", trickle), web.get("/truncated", truncated),
    ])
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield Server(f"http://127.0.0.1:{port}", port, content, requests)
    await runner.cleanup()


@pytest.fixture
def rules(server: Server) -> UriFilter:
    """Only this test server: http, host 127.0.0.1, its port."""
    return UriFilter(allowed_schemes=("http",), allowed_hosts=("127.0.0.1",), allowed_ports=(server.port,))


async def fetch(uri: str, dest: Path, rules: UriFilter, **kw) -> int:  # type: ignore[no-untyped-def]
    kw.setdefault("max_bytes", 64 * MiB)
    kw.setdefault("timeout_s", 10)
    return await download(uri, dest, rules=rules, **kw)


async def refused(uri: str, dest: Path, rules: UriFilter, error=BadRequest, **kw) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(error) as info:
        await fetch(uri, dest, rules, **kw)
    assert not dest.exists(), "a failed download left its file behind"
    return info.value.message


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


# --- success -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/image", "/chunked"])
async def test_download_is_sparse_and_byte_identical(server: Server, rules, tmp_path: Path, path: str) -> None:
    dest = tmp_path / "staged"
    size = await fetch(server.url(path), dest, rules)
    assert size == len(server.content) == dest.stat().st_size
    assert dest.read_bytes() == server.content
    assert allocated(dest) <= 1 * MiB  # ~70 KB of data in 9 MiB: holes stayed holes


async def test_download_feeds_a_digest(server: Server, rules, tmp_path: Path) -> None:
    digest = ImageDigest()
    await fetch(server.url("/image"), tmp_path / "staged", rules, digest=digest)
    assert (digest.size, digest.checksum, digest.os_hash_value) == (
        len(server.content), hashlib.md5(server.content).hexdigest(),
        hashlib.sha512(server.content).hexdigest())


async def test_the_connection_goes_only_to_checked_hosts() -> None:
    # The session's resolver knows only what the filter checked: a host it
    # was never asked about has no address at all.
    resolver = PinnedResolver()
    await resolver.pin("http://127.0.0.1/x", UriFilter())
    assert [r["host"] for r in await resolver.resolve("127.0.0.1", 80, socket.AF_UNSPEC)] == ["127.0.0.1"]
    with pytest.raises(OSError, match="not checked"):
        await resolver.resolve("localhost", 80, socket.AF_UNSPEC)


async def test_existing_dest_is_replaced(server: Server, rules, tmp_path: Path) -> None:
    dest = tmp_path / "staged"
    dest.write_bytes(b"\xff" * (12 * MiB))  # longer, and non-zero where the image has holes
    await fetch(server.url("/image"), dest, rules)
    assert dest.read_bytes() == server.content


# --- redirects -------------------------------------------------------------------


async def test_redirect_to_an_allowed_target_is_followed(server: Server, rules, tmp_path: Path) -> None:
    dest = tmp_path / "staged"
    await fetch(server.url(f"/redirect?to={server.url('/image')}"), dest, rules)
    assert dest.read_bytes() == server.content


async def test_relative_redirects_are_resolved(server: Server, rules, tmp_path: Path) -> None:
    dest = tmp_path / "staged"
    await fetch(server.url(f"/chain/{MAX_REDIRECTS - 1}"), dest, rules)  # /chain/n -> ... -> /image
    assert dest.read_bytes() == server.content


async def test_more_than_max_redirects_is_refused(server: Server, rules, tmp_path: Path) -> None:
    server.requests.clear()
    message = await refused(server.url(f"/chain/{MAX_REDIRECTS}"), tmp_path / "staged", rules)
    assert f"more than {MAX_REDIRECTS} redirects" in message
    assert "/image" not in server.requests


async def test_redirect_loop_is_refused(server: Server, rules, tmp_path: Path) -> None:
    assert "redirect loop" in await refused(server.url("/loop"), tmp_path / "staged", rules)


async def test_redirect_without_location_is_refused(server: Server, rules, tmp_path: Path) -> None:
    assert "without a Location" in await refused(server.url("/no-location"), tmp_path / "staged", rules)


@pytest.mark.parametrize("target, complaint", [
    ("http://localhost:{port}/image", "host 'localhost' is not in the allowed hosts (127.0.0.1)"),
    ("http://127.0.0.1:1/image", "port 1 is not in the allowed ports"),
    ("ftp://127.0.0.1/image", "scheme 'ftp' is not in the allowed schemes (http)"),
    ("file:///etc/passwd", "scheme 'file'"),
])
async def test_redirect_to_a_disallowed_target_is_refused(
    server: Server, rules, tmp_path: Path, target: str, complaint: str
) -> None:
    server.requests.clear()
    target = target.format(port=server.port)
    message = await refused(server.url(f"/redirect?to={target}"), tmp_path / "staged", rules)
    assert complaint in message and "redirected to by" in message
    assert server.requests == [f"/redirect?to={target}"]  # the target was never fetched


# --- refusals and failures -----------------------------------------------------


async def test_uri_refused_before_any_request(server: Server, rules, tmp_path: Path) -> None:
    server.requests.clear()
    message = await refused(f"http://localhost:{server.port}/image", tmp_path / "staged", rules)
    assert "host 'localhost'" in message and server.requests == []


async def test_scheme_allowed_by_the_filter_but_not_fetchable(tmp_path: Path) -> None:
    ftp_allowed = UriFilter(allowed_schemes=("http", "https", "ftp"))
    message = await refused("ftp://127.0.0.1/image", tmp_path / "staged", ftp_allowed)
    assert "allows scheme 'ftp' but this hub can only download over http and https" in message


async def test_http_error_status_names_status_and_uri(server: Server, rules, tmp_path: Path) -> None:
    message = await refused(server.url("/nothing-here"), tmp_path / "staged", rules)
    assert "404" in message and server.url("/nothing-here") in message


@pytest.mark.parametrize("path", ["/image", "/chunked"])  # declared length, then counted
async def test_too_large_is_refused(server: Server, rules, tmp_path: Path, path: str) -> None:
    message = await refused(server.url(path), tmp_path / "staged", rules,
                            error=RequestTooLarge, max_bytes=len(server.content) - 1)
    assert f"maximum image size of {len(server.content) - 1} bytes" in message


async def test_exactly_max_bytes_is_accepted(server: Server, rules, tmp_path: Path) -> None:
    assert await fetch(server.url("/chunked"), tmp_path / "staged", rules,
                       max_bytes=len(server.content)) == len(server.content)


async def test_connection_refused_is_bad_request(rules, tmp_path: Path) -> None:
    closed_port = UriFilter(allowed_schemes=("http",), allowed_ports=())
    message = await refused("http://127.0.0.1:1/image", tmp_path / "staged", closed_port)
    assert message.startswith("could not download http://127.0.0.1:1/image")


async def test_body_cut_short_is_bad_request(server: Server, rules, tmp_path: Path) -> None:
    assert "could not download" in await refused(server.url("/truncated"), tmp_path / "staged", rules)


async def test_silent_server_times_out(server: Server, rules, tmp_path: Path) -> None:
    message = await refused(server.url("/trickle"), tmp_path / "staged", rules, timeout_s=0.3)
    assert "could not download" in message and "in time" in message


async def test_cancellation_removes_the_partial_file(server: Server, rules, tmp_path: Path) -> None:
    dest = tmp_path / "staged"
    task = asyncio.create_task(fetch(server.url("/trickle"), dest, rules))
    for _ in range(500):  # wait until some data has landed on disk
        if dest.exists() and allocated(dest) > 0:
            break
        await asyncio.sleep(0.01)
    assert dest.exists() and allocated(dest) > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not dest.exists()


async def test_credentials_are_not_echoed(server: Server, rules, tmp_path: Path) -> None:
    uri = f"http://user:s3cret@127.0.0.1:{server.port}/nothing-here"
    message = await refused(uri, tmp_path / "staged", rules)
    assert "s3cret" not in message and "404" in message


# --- SSRF: by address, not by spelling -----------------------------------------
# The blocklist names a network; every spelling of an address in it, and every
# name resolving into it, is refused before anything is fetched. Only loopback
# is ever contacted: the refused URIs are refused before any connection.

LOOPBACK_BLOCKED = UriFilter(allowed_schemes=("http",), disallowed_hosts=("127.0.0.0/8",), allowed_ports=())
ALIASES = [
    "http://0x7f.1/image", "http://2130706433/image", "http://127.1/image",
    "http://[::ffff:127.0.0.1]/image", "http://0.0.0.0/image", "http://localhost/image",
    "http://LOCALHOST./image", "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/image",
    "http://127\u30020\u30020\u30021/image",
]


@pytest.mark.parametrize("uri", ALIASES)
async def test_every_spelling_of_a_blocked_address_is_refused(tmp_path: Path, uri: str) -> None:
    message = await refused(uri, tmp_path / "staged", LOOPBACK_BLOCKED)
    assert "is in the disallowed hosts (127.0.0.0/8)" in message


@pytest.fixture
async def server6(server: Server) -> AsyncIterator[str]:
    """A redirector on ::1, outside 127.0.0.0/8, bouncing to `to`."""
    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.add_routes([web.get("/redirect", redirect)])
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "::1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://[::1]:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("alias", ["0x7f.1", "[::ffff:127.0.0.1]", "0.0.0.0", "localhost",
                                   "\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127\u30020\u30020\u30021"])
async def test_redirect_to_an_alias_of_a_blocked_address_is_refused(
    server: Server, server6: str, tmp_path: Path, alias: str
) -> None:
    server.requests.clear()
    target = f"http://{alias}:{server.port}/image"
    message = await refused(f"{server6}/redirect?to={target}", tmp_path / "staged", LOOPBACK_BLOCKED)
    assert "is in the disallowed hosts (127.0.0.0/8)" in message and "redirected to by" in message
    assert server.requests == []  # the loopback server behind the alias was never reached


async def test_redirect_from_an_allowed_host_still_works(server: Server, server6: str, tmp_path: Path) -> None:
    dest = tmp_path / "staged"
    target = server.url("/image")
    await fetch(f"{server6}/redirect?to={target}", dest, UriFilter(allowed_ports=()))
    assert dest.read_bytes() == server.content


@pytest.mark.parametrize("host", ["0x7f.1", "[::ffff:127.0.0.1]"])
async def test_an_allowed_address_works_in_any_spelling(server: Server, rules, tmp_path: Path, host: str) -> None:
    dest = tmp_path / "staged"
    await fetch(f"http://{host}:{server.port}/image", dest, rules)
    assert dest.read_bytes() == server.content


async def test_an_allowed_name_reaches_what_it_resolves_to(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "staged"
    await fetch(f"http://localhost:{server.port}/image", dest,
                UriFilter(allowed_hosts=("localhost",), allowed_ports=(server.port,)))
    assert dest.read_bytes() == server.content
