"""The transfer protocol end to end on loopback: a real FileStore served by
`data_routes` on a real aiohttp server, pulled by `HttpSource` through `pump`
into another FileStore. Faults are real too: corrupted bodies (the test-only
hook), a connection cut mid-body, refusals."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edgesync.errors import Forbidden, NotFound, StoreUnavailable, Unauthorized
from edgesync.observer import CopyObserver
from edgesync.stores.base import ImageStore
from edgesync.stores.file import FileStore
from edgesync.transfer.http import (
    CHUNK_DIGEST_HEADER,
    CORRUPT_CHUNKS_ENV,
    MAX_RANGE_BYTES,
    PREFIX,
    ChunkDigestMismatch,
    HttpSource,
    RateLimiter,
    ServedCopy,
    ServedCounters,
    TransferError,
    data_routes,
)
from edgesync.transfer.pipeline import pump
from edgesync.transfer.serving_limits import ServingLimits

MiB = 1 << 20
KiB = 1 << 10
TOKEN = "tok-site"
Middleware = Callable[[web.Request, Callable[[web.Request], Awaitable[web.StreamResponse]]],
                      Awaitable[web.StreamResponse]]

# 37 MiB + 12 KiB, four data runs: one at the start, one across two 4 MiB
# chunk boundaries, a small one, and one ending unaligned at the very end.
IMAGE_SIZE = 37 * MiB + 12 * KiB
IMAGE_RUNS = [(0, 1 * MiB), (3 * MiB + 64 * KiB, 6 * MiB), (20 * MiB, 64 * KiB), (IMAGE_SIZE - 200 * KiB, 200 * KiB)]


# --- fixtures and helpers ---------------------------------------------------------


@dataclass
class Site:
    """A store served over HTTP, with every request the server saw and what
    its data routes counted."""

    store: ImageStore
    url: str
    requests: list[str]
    served: ServedCounters


@pytest.fixture(autouse=True)
def no_fault_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CORRUPT_CHUNKS_ENV, raising=False)


@pytest.fixture
def source_store(tmp_path: Path) -> FileStore:
    return FileStore("central", tmp_path / "central")


@pytest.fixture
def dest_store(tmp_path: Path) -> FileStore:
    return FileStore("dcn0", tmp_path / "dcn0")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def publish_sparse(store: FileStore, size: int, runs: list[tuple[int, int]],
                         image_id: str | None = None) -> tuple[str, bytes]:
    """A published image of `size` bytes, random data in `runs`, holes elsewhere."""
    image_id = image_id or str(uuid.uuid4())
    content = bytearray(size)
    async with await store.open_writer(image_id, size) as writer:
        for offset, length in runs:
            chunk = os.urandom(length)
            content[offset:offset + length] = chunk
            await writer.write(offset, chunk)
        await writer.publish()
    return image_id, bytes(content)


def lookup_in(store: ImageStore) -> Callable[[str], Awaitable[ImageStore]]:
    async def lookup(image_id: str) -> ImageStore:
        if not await store.exists(image_id):
            raise NotFound(f"no published copy of image {image_id} at this site")
        return store
    return lookup


async def authorize(request: web.Request, image_id: str) -> None:
    token = request.headers.get("X-Auth-Token")
    if token is None:
        raise Unauthorized("this endpoint needs an X-Auth-Token")
    if token != TOKEN:
        raise Forbidden("this token may not read images here")


@asynccontextmanager
async def serving(
    store: ImageStore,
    *,
    lookup: Callable[[str], Awaitable[ImageStore]] | None = None,
    middlewares: tuple[Middleware, ...] = (),
    lookup_reuse_s: float = 1.0,
    limits: ServingLimits | None = None,
) -> AsyncIterator[Site]:
    """`data_routes` over `store` on a real server on 127.0.0.1."""
    requests: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        requests.append(request.path_qs)
        return await handler(request)

    served = ServedCounters()
    app = web.Application(middlewares=[record, *middlewares])
    app.add_routes(data_routes(lookup or lookup_in(store), authorize, counters=served, lookup_reuse_s=lookup_reuse_s,
                               limits=limits))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Site(store, str(server.make_url("")).rstrip("/"), requests, served)
    finally:
        await server.close()


def source(session: aiohttp.ClientSession, site: Site, image_id: str, **kwargs: object) -> HttpSource:
    kwargs.setdefault("token", TOKEN)
    kwargs.setdefault("backoff_initial_s", 0.01)
    kwargs.setdefault("backoff_max_s", 0.05)
    return HttpSource(session, site.url, image_id, **kwargs)  # type: ignore[arg-type]


async def pull(src: HttpSource, dest: FileStore, image_id: str) -> str:
    """What an agent does: pump into an unpublished copy, check, publish."""
    size = await src.size()
    async with await dest.open_writer(image_id, size) as writer:
        digest = await pump(src, writer, size=size, with_md5=False)
        await writer.publish()
    return digest.os_hash_value


async def read_all(store: ImageStore, image_id: str) -> bytes:
    size = await store.size(image_id)
    return await store.read(image_id, 0, size)


def data_bytes(runs: list[tuple[int, int]]) -> int:
    return sum(length for _, length in runs)


# --- a whole copy ---------------------------------------------------------------------


async def test_pull_gives_an_identical_sparse_copy_and_sends_only_data(
    source_store: FileStore, dest_store: FileStore, session: aiohttp.ClientSession
) -> None:
    image_id, content = await publish_sparse(source_store, IMAGE_SIZE, IMAGE_RUNS)
    async with serving(source_store) as site:
        src = source(session, site, image_id)
        os_hash_value = await pull(src, dest_store, image_id)

    assert await read_all(dest_store, image_id) == content
    assert os_hash_value == hashlib.sha512(content).hexdigest()
    # The server's counters (its metrics, the benchmarks) saw the same bytes leave.
    # (Random bytes don't compress: what was sent is the data itself.)
    assert site.served == ServedCounters(served_bytes_total=data_bytes(IMAGE_RUNS), shared_ranges_total=0,
                                         served_ranges_total=len([r for r in site.requests if "/data?" in r]),
                                         sent_bytes_total=data_bytes(IMAGE_RUNS))
    # Holes never cross the wire, and stay holes at the destination.
    source_data = sum(e.length for e in await source_store.extents(image_id))
    assert src.bytes_fetched == source_data == data_bytes(IMAGE_RUNS)
    assert src.bytes_fetched <= 1.05 * await source_store.allocated_bytes(image_id)
    assert await dest_store.allocated_bytes(image_id) <= 1.05 * data_bytes(IMAGE_RUNS)
    assert await dest_store.extents(image_id) == await source_store.extents(image_id)
    # One extent map, then only data ranges, none bigger than the protocol allows.
    assert [r for r in site.requests if r.endswith("/extents")] == [f"{PREFIX}/images/{image_id}/extents"]
    assert src.refetches == 0 and src.digest_mismatches == 0


async def test_an_image_that_is_all_hole_transfers_no_bytes(
    source_store: FileStore, dest_store: FileStore, session: aiohttp.ClientSession
) -> None:
    image_id, content = await publish_sparse(source_store, 9 * MiB, [])
    async with serving(source_store) as site:
        src = source(session, site, image_id)
        assert await pull(src, dest_store, image_id) == hashlib.sha512(content).hexdigest()
    assert src.bytes_fetched == 0
    assert await dest_store.size(image_id) == 9 * MiB
    assert await dest_store.allocated_bytes(image_id) == 0


# --- corruption ---------------------------------------------------------------------


async def test_corrupted_ranges_are_caught_and_fetched_again(
    source_store: FileStore, dest_store: FileStore, session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image_id, content = await publish_sparse(source_store, IMAGE_SIZE, IMAGE_RUNS)
    monkeypatch.setenv(CORRUPT_CHUNKS_ENV, "2")
    observer = Observed()
    async with serving(source_store) as site:
        src = source(session, site, image_id, observer=observer)
        os_hash_value = await pull(src, dest_store, image_id)

    assert await read_all(dest_store, image_id) == content
    assert os_hash_value == hashlib.sha512(content).hexdigest()
    assert src.digest_mismatches == 2
    assert src.refetches >= 2
    # The daemons' metrics see the same: every byte received, refetches included.
    assert observer.mismatches == ["chunk", "chunk"]
    assert observer.received_bytes == src.bytes_fetched > data_bytes(IMAGE_RUNS)


class Observed(CopyObserver):
    def __init__(self) -> None:
        self.received_bytes = 0
        self.mismatches: list[str] = []

    def received(self, nbytes: int) -> None:
        self.received_bytes += nbytes

    def digest_mismatch(self, kind: str) -> None:
        self.mismatches.append(kind)


async def test_the_fault_hook_armed_for_one_image_leaves_the_others_alone(
    source_store: FileStore, dest_store: FileStore, session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other_id, other = await publish_sparse(source_store, IMAGE_SIZE, IMAGE_RUNS)
    target_id, target = await publish_sparse(source_store, IMAGE_SIZE, IMAGE_RUNS)
    monkeypatch.setenv(CORRUPT_CHUNKS_ENV, f"2:{target_id}")
    async with serving(source_store) as site:
        other_src = source(session, site, other_id)
        await pull(other_src, dest_store, other_id)  # served first: it must not use up the count
        target_src = source(session, site, target_id)
        await pull(target_src, dest_store, target_id)

    assert other_src.digest_mismatches == 0
    assert target_src.digest_mismatches == 2
    assert await read_all(dest_store, other_id) == other
    assert await read_all(dest_store, target_id) == target


async def test_a_source_that_always_corrupts_fails_and_publishes_nothing(
    source_store: FileStore, dest_store: FileStore, session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image_id, _ = await publish_sparse(source_store, IMAGE_SIZE, IMAGE_RUNS)
    monkeypatch.setenv(CORRUPT_CHUNKS_ENV, "1000000")
    async with serving(source_store) as site:
        src = source(session, site, image_id, max_attempts=3)
        with pytest.raises(ChunkDigestMismatch) as caught:
            await pull(src, dest_store, image_id)

    assert caught.value.retryable
    assert "gave up after 3 attempts" in caught.value.message
    assert src.digest_mismatches >= 3
    assert not await dest_store.exists(image_id)
    assert list(dest_store.root.iterdir()) == []  # the writer was aborted: no .partial left


async def test_the_fault_hook_is_inert_unless_a_positive_integer(
    source_store: FileStore, dest_store: FileStore, session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image_id, content = await publish_sparse(source_store, 8 * MiB, [(0, 8 * MiB)])
    for value in ("", "0", "-3", "two"):
        monkeypatch.setenv(CORRUPT_CHUNKS_ENV, value)
        async with serving(source_store) as site:
            src = source(session, site, image_id)
            assert await src.read(0, 4 * MiB) == content[:4 * MiB]
            assert src.digest_mismatches == 0, value


# --- the network fails ----------------------------------------------------------------


class CutFirstDataBody(ServingLimits):
    """Serving that answers the first data request with its real headers
    and half its body, then cuts the connection (the routes send their
    bodies through ServingLimits.send)."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped: list[int] = []

    async def send(self, request: web.Request, response: web.StreamResponse, body: bytes) -> web.StreamResponse:
        if self.dropped or not request.path.endswith("/data"):
            return await super().send(request, response, body)
        self.dropped.append(len(body) // 2)
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[:len(body) // 2])
        assert request.transport is not None
        request.transport.close()
        return response


async def test_a_connection_cut_mid_body_is_retried(
    source_store: FileStore, dest_store: FileStore, session: aiohttp.ClientSession
) -> None:
    image_id, content = await publish_sparse(source_store, IMAGE_SIZE, IMAGE_RUNS)
    cut = CutFirstDataBody()
    dropped = cut.dropped
    async with serving(source_store, limits=cut) as site:
        src = source(session, site, image_id)
        os_hash_value = await pull(src, dest_store, image_id)

    assert dropped, "the fault never happened"
    assert await read_all(dest_store, image_id) == content
    assert os_hash_value == hashlib.sha512(content).hexdigest()
    assert src.refetches == 1
    assert src.digest_mismatches == 0
    # The half body that arrived before the cut was on the wire too.
    assert data_bytes(IMAGE_RUNS) < src.bytes_fetched <= data_bytes(IMAGE_RUNS) + dropped[0]


async def test_an_unavailable_store_is_retried(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    store = FlakyStore("central", tmp_path / "central")
    image_id, content = await publish_sparse(store, 4 * MiB, [(0, 4 * MiB)])
    lookups = 0

    async def flaky_lookup(wanted: str) -> ImageStore:
        nonlocal lookups
        lookups += 1
        if lookups == 1:
            raise StoreUnavailable("ceph is recovering")
        return store

    async with serving(store, lookup=flaky_lookup) as site:
        src = source(session, site, image_id)
        assert await src.size() == 4 * MiB  # the map survived one 503
        store.failing_reads = 1
        assert await src.read(0, 4 * MiB) == content  # the range survived another
    assert src.refetches == 1


class FlakyStore(FileStore):
    """A FileStore whose next `failing_reads` reads fail as Ceph recovering would."""

    failing_reads = 0

    async def read(self, image_id: str, offset: int, length: int) -> bytes:
        if self.failing_reads:
            self.failing_reads -= 1
            raise StoreUnavailable("ceph is recovering")
        return await super().read(image_id, offset, length)


@pytest.mark.parametrize("reuse_s", [0.0, 3600.0])
async def test_data_requests_reuse_a_recent_lookup_and_the_map_never_does(
    source_store: FileStore, dest_store: FileStore, session: aiohttp.ClientSession, reuse_s: float
) -> None:
    """Looking the image up for every range cost the hub five catalog queries per 4 MiB."""
    image_id, content = await publish_sparse(source_store, IMAGE_SIZE, IMAGE_RUNS)
    lookups = 0

    async def counting_lookup(wanted: str) -> ImageStore:
        nonlocal lookups
        lookups += 1
        return source_store

    async with serving(source_store, lookup=counting_lookup, lookup_reuse_s=reuse_s) as site:
        await pull(source(session, site, image_id), dest_store, image_id)
        await source(session, site, image_id).size()
    ranges = len([r for r in site.requests if "/data?" in r])
    assert lookups == (2 if reuse_s else 2 + ranges)
    assert await read_all(dest_store, image_id) == content


async def test_an_unreachable_peer_fails_retryable(session: aiohttp.ClientSession) -> None:
    src = HttpSource(session, unused_loopback_url(), str(uuid.uuid4()), token=TOKEN, max_attempts=2,
                     backoff_initial_s=0.01, backoff_max_s=0.01)
    with pytest.raises(TransferError) as caught:
        await src.extents()
    assert caught.value.retryable and caught.value.status is None
    assert "gave up after 2 attempts" in caught.value.message


def unused_loopback_url() -> str:
    """A loopback URL nobody listens on (the port was bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("token,status", [(None, 401), ("tok-other-site", 403)])
async def test_refused_credentials_fail_at_once_and_for_good(
    source_store: FileStore, session: aiohttp.ClientSession, token: str | None, status: int
) -> None:
    image_id, _ = await publish_sparse(source_store, 4 * MiB, [(0, 64 * KiB)])
    async with serving(source_store) as site:
        src = source(session, site, image_id, token=token)
        with pytest.raises(TransferError) as caught:
            await src.extents()
        assert len(site.requests) == 1  # not retried
    assert not caught.value.retryable
    assert caught.value.status == status
    assert ("X-Auth-Token" if status == 401 else "may not read") in caught.value.message


async def test_an_unknown_image_is_a_404_in_json(
    source_store: FileStore, session: aiohttp.ClientSession
) -> None:
    missing = str(uuid.uuid4())
    async with serving(source_store) as site:
        async with session.get(f"{site.url}{PREFIX}/images/{missing}/extents",
                               headers={"X-Auth-Token": TOKEN}) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == {
                "code": 404, "title": "Not Found",
                "message": f"no published copy of image {missing} at this site",
            }
        src = source(session, site, missing)
        with pytest.raises(TransferError) as caught:
            await src.read(0, 4096)
    assert caught.value.status == 404 and not caught.value.retryable
    assert "no published copy" in caught.value.message


@pytest.mark.parametrize("query,status", [
    ("offset=0", 400),                                   # no length
    ("length=4096", 400),                                # no offset
    ("offset=0&length=0", 400),                          # empty range
    (f"offset=0&length={MAX_RANGE_BYTES + 1}", 400),     # too big for one request
    ("offset=-1&length=4096", 400),
    ("offset=x&length=4096", 400),
    (f"offset={4 * MiB}&length=1", 416),                 # starts at the end
    (f"offset={4 * MiB - 10}&length=11", 416),           # runs one byte past it
])
async def test_ranges_are_validated(
    source_store: FileStore, session: aiohttp.ClientSession, query: str, status: int
) -> None:
    image_id, _ = await publish_sparse(source_store, 4 * MiB, [(0, 64 * KiB)])
    async with serving(source_store) as site, session.get(f"{site.url}{PREFIX}/images/{image_id}/data?{query}",
                           headers={"X-Auth-Token": TOKEN}) as resp:
        body = await resp.json()
    assert resp.status == status, body
    assert body["error"]["code"] == status and body["error"]["message"]
    if status == 416:
        assert resp.headers["Content-Range"] == f"bytes */{4 * MiB}"


async def test_a_range_comes_with_its_digest_and_length(
    source_store: FileStore, session: aiohttp.ClientSession
) -> None:
    image_id, content = await publish_sparse(source_store, 4 * MiB, [(0, 64 * KiB)])
    async with serving(source_store) as site:
        async with session.get(f"{site.url}{PREFIX}/images/{image_id}/data?offset={4 * MiB - 100}&length=100",
                               headers={"X-Auth-Token": TOKEN}) as resp:
            body = await resp.read()
        async with session.get(f"{site.url}{PREFIX}/images/{image_id}/extents",
                               headers={"X-Auth-Token": TOKEN}) as resp_map:
            extent_map = await resp_map.json()
    assert resp.status == 200
    assert body == content[-100:]  # a hole reads as zeros when asked for
    assert resp.headers["Content-Length"] == "100"
    assert resp.headers[CHUNK_DIGEST_HEADER] == hashlib.sha256(body).hexdigest()
    assert extent_map == {"image_id": image_id, "size": 4 * MiB, "extents": [[0, 64 * KiB]]}


# --- several sites pulling one copy ----------------------------------------------------------


class CountingStore(FileStore):
    """A FileStore that counts the ranges read from it."""

    reads = 0

    async def read(self, image_id: str, offset: int, length: int) -> bytes:
        self.reads += 1
        return await super().read(image_id, offset, length)


def served_as(store: ImageStore, content_id: str | None) -> Callable[[str], Awaitable[ServedCopy]]:
    async def lookup(image_id: str) -> ServedCopy:
        return ServedCopy(store, content_id)
    return lookup


async def test_sites_pulling_one_copy_share_each_range_read(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    store = CountingStore("central", tmp_path / "central")
    image_id, content = await publish_sparse(store, IMAGE_SIZE, IMAGE_RUNS)
    async with serving(store, lookup=served_as(store, hashlib.sha512(content).hexdigest())) as site:
        sources = [source(session, site, image_id) for _ in range(3)]
        sites = [FileStore(f"dcn{n}", tmp_path / f"dcn{n}") for n in range(3)]
        digests = await asyncio.gather(*(pull(src, dest, image_id) for src, dest in zip(sources, sites, strict=True)))
    ranges = len([r for r in site.requests if "/data?" in r]) // 3
    assert store.reads == ranges  # one read per range, not one per site
    assert digests == [hashlib.sha512(content).hexdigest()] * 3
    for dest in sites:
        assert await read_all(dest, image_id) == content
    assert site.served == ServedCounters(served_bytes_total=3 * data_bytes(IMAGE_RUNS),
                                         served_ranges_total=3 * ranges, shared_ranges_total=2 * ranges,
                                         sent_bytes_total=3 * data_bytes(IMAGE_RUNS))


async def test_without_a_content_id_every_request_reads(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    store = CountingStore("central", tmp_path / "central")
    image_id, _content = await publish_sparse(store, IMAGE_SIZE, IMAGE_RUNS)
    async with serving(store, lookup=served_as(store, None)) as site:
        for n in range(2):
            await pull(source(session, site, image_id), FileStore(f"dcn{n}", tmp_path / f"dcn{n}"), image_id)
    assert store.reads == len([r for r in site.requests if "/data?" in r])


async def test_a_new_copy_under_the_same_image_id_is_never_served_from_the_old_reads(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """An import that failed and was staged again gives the same image id other bytes."""
    first = FileStore("central", tmp_path / "first")
    image_id, old = await publish_sparse(first, IMAGE_SIZE, IMAGE_RUNS)
    second = FileStore("central", tmp_path / "second")
    _, new = await publish_sparse(second, IMAGE_SIZE, IMAGE_RUNS, image_id=image_id)
    current: list[ServedCopy] = [ServedCopy(first, hashlib.sha512(old).hexdigest())]

    async def lookup(_image_id: str) -> ServedCopy:
        return current[0]

    async with serving(first, lookup=lookup) as site:
        await pull(source(session, site, image_id), FileStore("a", tmp_path / "a"), image_id)
        current[0] = ServedCopy(second, hashlib.sha512(new).hexdigest())
        got = await pull(source(session, site, image_id), FileStore("b", tmp_path / "b"), image_id)
    assert got == hashlib.sha512(new).hexdigest()


# --- the bandwidth limit ---------------------------------------------------------------


async def test_the_rate_limit_paces_a_pull(
    source_store: FileStore, dest_store: FileStore, session: aiohttp.ClientSession
) -> None:
    image_id, content = await publish_sparse(source_store, 8 * MiB, [(0, 8 * MiB)])
    limiter = RateLimiter(16 * MiB)
    async with serving(source_store) as site:
        src = source(session, site, image_id, limiter=limiter)
        started = time.monotonic()
        await pull(src, dest_store, image_id)
        elapsed = time.monotonic() - started
    assert await read_all(dest_store, image_id) == content
    assert elapsed >= 0.45  # 8 MiB at 16 MiB/s; only the lower bound, so never flaky


async def test_the_rate_limit_is_shared_by_concurrent_transfers() -> None:
    limiter = RateLimiter(16 * MiB)
    started = time.monotonic()
    await asyncio.gather(*(limiter.acquire(1 * MiB) for _ in range(8)))
    assert time.monotonic() - started >= 0.45


async def test_no_limit_means_no_wait() -> None:
    started = time.monotonic()
    for limiter in (RateLimiter(0), RateLimiter(-1)):
        await limiter.acquire(1 << 40)
    assert time.monotonic() - started < 0.1


async def test_a_cancelled_wait_gives_its_bytes_back() -> None:
    limiter = RateLimiter(16 * MiB)
    waiter = asyncio.create_task(limiter.acquire(16 * MiB))  # would wait 1 s
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    started = time.monotonic()
    await limiter.acquire(1 * MiB)  # waits for its own 1/16 s, not the cancelled second
    assert time.monotonic() - started < 0.5
