"""zstd on the wire: negotiated per request, per range, never making a range bigger;
an older agent (no offer) and an older hub (no answer) still work uncompressed.
The real data routes and HttpSource on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import zstandard
from aiohttp import web
from aiohttp.test_utils import TestServer

from edgesync.errors import ChunkDigestMismatch
from edgesync.stores.file import FileStore
from edgesync.transfer import compression
from edgesync.transfer.http import CORRUPT_CHUNKS_ENV, HttpSource, ServedCopy, ServedCounters, data_routes
from edgesync.transfer.pipeline import WINDOW, pump
from edgesync.transfer.wire import ACCEPT_ENCODING_HEADER, CHUNK_DIGEST_HEADER, ENCODING_HEADER, data_path, spans_path

MiB = 1 << 20
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def anyone(request: web.Request, image_id: str) -> None:
    """Every caller may read every image here (authorisation is tested in test_transfer_http)."""



@pytest.fixture(autouse=True)
def no_fault_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CORRUPT_CHUNKS_ENV, raising=False)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def text_like(size: int) -> bytes:
    """Compressible, like the files of an OS image: words drawn at random."""
    words = [os.urandom(3).hex().encode() for _ in range(300)]
    rng = int.from_bytes(os.urandom(4), "big")
    out = bytearray()
    while len(out) < size:
        rng = (rng * 1103515245 + 12345) & 0x7FFFFFFF
        out += words[rng % len(words)] + b" "
    return bytes(out[:size])


async def publish(store: FileStore, content: bytes) -> str:
    image_id = str(uuid.uuid4())
    async with await store.open_writer(image_id, len(content)) as writer:
        for at in range(0, len(content), 4 * MiB):
            await writer.write(at, content[at:at + 4 * MiB])
        await writer.publish()
    return image_id


@asynccontextmanager
async def serving(store: FileStore, *middlewares: object) -> AsyncIterator[tuple[str, ServedCounters]]:
    served = ServedCounters()

    async def lookup(image_id: str) -> FileStore:
        return store

    app = web.Application(middlewares=list(middlewares))  # type: ignore[arg-type]
    app.add_routes(data_routes(lookup, anyone, counters=served))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), served
    finally:
        await server.close()


async def pull(session: aiohttp.ClientSession, url: str, image_id: str, dest: FileStore, **kw: object) -> HttpSource:
    source = HttpSource(session, url, image_id, token=None, backoff_initial_s=0.01, backoff_max_s=0.02, **kw)  # type: ignore[arg-type]
    size = await source.size()
    async with await dest.open_writer(image_id, size) as writer:
        await pump(source, writer, size=size, with_md5=False)
        await writer.publish()
    return source


async def test_compressible_ranges_cross_compressed_and_arrive_identical(session, tmp_path: Path) -> None:
    central, edge = FileStore("central", tmp_path / "c"), FileStore("dcn0", tmp_path / "e")
    content = text_like(12 * MiB)
    image_id = await publish(central, content)
    async with serving(central) as (url, served):
        source = await pull(session, url, image_id, edge)
    assert await edge.read(image_id, 0, len(content)) == content
    assert source.data_bytes_fetched == served.served_bytes_total == len(content)
    assert source.bytes_fetched == served.sent_bytes_total < len(content) * 0.7


async def test_ranges_that_dont_compress_are_sent_as_they_are(session, tmp_path: Path) -> None:
    central = FileStore("central", tmp_path / "c")
    image_id = await publish(central, os.urandom(4 * MiB))
    async with serving(central) as (url, served), session.get(
            url + data_path(image_id), params={"offset": "0", "length": str(4 * MiB)},
            headers={ACCEPT_ENCODING_HEADER: "zstd"}) as resp:
        body = await resp.read()
    assert ENCODING_HEADER not in resp.headers and len(body) == 4 * MiB
    assert served.sent_bytes_total == 4 * MiB


async def test_an_older_agent_that_offers_nothing_gets_plain_bytes(session, tmp_path: Path) -> None:
    central = FileStore("central", tmp_path / "c")
    content = text_like(4 * MiB)
    image_id = await publish(central, content)
    # What an agent from before compression sends: no offer.
    async with serving(central) as (url, _), session.get(
            url + data_path(image_id), params={"offset": "0", "length": str(4 * MiB)}) as resp:
        body = await resp.read()
    assert ENCODING_HEADER not in resp.headers and body == content
    assert resp.headers[CHUNK_DIGEST_HEADER] == hashlib.sha256(content).hexdigest()


async def test_an_older_hub_that_ignores_the_offer_still_serves_a_new_agent(session, tmp_path: Path) -> None:
    central, edge = FileStore("central", tmp_path / "c"), FileStore("dcn0", tmp_path / "e")
    content = text_like(6 * MiB)
    image_id = await publish(central, content)

    @web.middleware
    async def old_server(request: web.Request, handler: Handler) -> web.StreamResponse:
        # A hub from before compression: it never looks at the offer.
        headers = request.headers.copy()
        headers.pop(ACCEPT_ENCODING_HEADER, None)
        return await handler(request.clone(headers=headers))

    async with serving(central, old_server) as (url, served):
        source = await pull(session, url, image_id, edge)
    assert await edge.read(image_id, 0, len(content)) == content
    assert source.bytes_fetched == served.sent_bytes_total == len(content)


async def test_an_agent_can_ask_for_plain_bytes(session, tmp_path: Path) -> None:
    central, edge = FileStore("central", tmp_path / "c"), FileStore("dcn0", tmp_path / "e")
    image_id = await publish(central, text_like(4 * MiB))
    async with serving(central) as (url, _):
        source = await pull(session, url, image_id, edge, compress=False)
    assert source.bytes_fetched == 4 * MiB


async def test_a_corrupted_frame_is_caught_and_fetched_again(session, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(CORRUPT_CHUNKS_ENV, "2")
    central, edge = FileStore("central", tmp_path / "c"), FileStore("dcn0", tmp_path / "e")
    content = text_like(8 * MiB)
    image_id = await publish(central, content)
    async with serving(central) as (url, _):
        source = await pull(session, url, image_id, edge)
    assert await edge.read(image_id, 0, len(content)) == content
    assert source.refetches == 2 and source.digest_mismatches == 2


async def test_spans_answer_the_bytes_asked_for_in_order(session, tmp_path: Path) -> None:
    central = FileStore("central", tmp_path / "c")
    content = text_like(2 * MiB)
    image_id = await publish(central, content)
    spans = [[8192, 4096], [0, 100], [1 << 20, 5000]]
    async with serving(central) as (url, _):
        async with session.post(url + spans_path(image_id), json={"spans": spans},
                                headers={ACCEPT_ENCODING_HEADER: "zstd"}) as resp:
            body = await resp.read()
            encoding = resp.headers.get(ENCODING_HEADER)
        bad = []
        for doc in ({"spans": []}, {"spans": [[0, 0]]}, {"spans": [[0, 17 * MiB]]}, {"nope": 1}, "x"):
            async with session.post(url + spans_path(image_id), json=doc) as r:
                bad.append((r.status, (await r.json())["error"]["message"]))
    expected = b"".join(content[o:o + n] for o, n in spans)
    assert encoding == "zstd" and zstandard.ZstdDecompressor().decompress(body) == expected
    assert [status for status, _ in bad] == [400] * 5 and all(message for _, message in bad)


async def test_a_frame_claiming_another_size_is_refused_before_it_is_decompressed() -> None:
    frame = zstandard.ZstdCompressor().compress(bytes(10 * MiB))
    with pytest.raises(ChunkDigestMismatch, match="says it holds"):
        await compression.decompress(frame, 4096)
    assert await compression.compress(os.urandom(MiB)) is None
    assert await compression.compress(b"short") is None


def test_zstd_is_offered_while_the_link_is_unknown_or_slower_than_the_compressor() -> None:
    link = compression.LinkRate()
    assert link.worth_compressing  # nothing measured yet
    link.observe(1000, 1e-6)  # a tiny body says nothing about the link
    assert link.bytes_per_s is None
    link.observe(4 * MiB, 4 * MiB / 25e6)  # a 200 Mbit/s WAN link
    assert link.worth_compressing
    for _ in range(10):
        link.observe(4 * MiB, 4 * MiB / 2e9)  # loopback: 2 GB/s
    assert not link.worth_compressing
    for _ in range(10):
        link.observe(4 * MiB, 4 * MiB / 50e6)  # the link slowed down: compression comes back
    assert link.worth_compressing


def test_a_body_read_from_the_buffer_doesnt_turn_compression_off_on_a_slow_link() -> None:
    """Seen on the WAN lab's 200 Mbit/s links: with four ranges in flight each
    body arrives at ~6 MB/s, but one the agent read only once it had all come
    measured 1.4 GB/s; a moving average let that one reading stop the offers."""
    link = compression.LinkRate()
    for _ in range(5):
        link.observe(1 * MiB, 1 * MiB / 6e6)
    link.observe(265_000, 0.000187)  # already buffered: 1.4 GB/s
    assert link.worth_compressing
    link.observe(300_000, 0.000648)  # and another, right after
    assert link.worth_compressing
    for _ in range(3):
        link.observe(4 * MiB, 4 * MiB / 2e9)  # the link really is fast now: a majority of readings says so
    assert not link.worth_compressing


@pytest.mark.parametrize("link_is_fast", [True, False])
async def test_a_link_faster_than_the_compressor_gets_raw_ranges(
        session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, link_is_fast: bool) -> None:
    """The rate the client measured decides its offer: where the link beats the
    compressor (loopback, as here) the ranges after the first window go raw;
    where it doesn't, every range goes compressed. (The threshold is moved so
    the outcome doesn't hang on this machine's loopback speed.)"""
    monkeypatch.setattr(compression, "OFFER_BELOW_BYTES_PER_S", 1.0 if link_is_fast else 1e18)
    central, edge = FileStore("central", tmp_path / "c"), FileStore("dcn0", tmp_path / "e")
    content = text_like(40 * MiB)
    image_id = await publish(central, content)
    offers: list[bool] = []

    @web.middleware
    async def record_offers(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == data_path(image_id):
            offers.append(ACCEPT_ENCODING_HEADER in request.headers)
        return await handler(request)

    async with serving(central, record_offers) as (url, served):
        source = await pull(session, url, image_id, edge)
    assert await edge.read(image_id, 0, len(content)) == content
    assert len(offers) == 10 and source.link is not None and source.link.bytes_per_s is not None
    if link_is_fast:
        # the read-ahead's (the window, one queued, one being read), sent before anything was measured
        assert offers.count(True) <= WINDOW + 2 and offers[-3:] == [False] * 3
        assert served.sent_bytes_total > len(content) // 2
    else:
        assert all(offers) and served.sent_bytes_total < len(content) * 0.7


async def test_sites_that_offer_zstd_and_sites_that_dont_share_one_read(session, tmp_path: Path) -> None:
    """Each site decides its offer by its own link; the hub still reads (and
    compresses) each range once for all of them, and answers each as it asked."""
    central = FileStore("central", tmp_path / "c")
    content = text_like(16 * MiB)
    image_id = await publish(central, content)
    served = ServedCounters()

    async def lookup(_image_id: str) -> ServedCopy:
        return ServedCopy(central, "content-of-" + image_id)

    app = web.Application()
    app.add_routes(data_routes(lookup, anyone, counters=served))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    try:
        for first_offers in (True, False):
            before = served.shared_ranges_total
            edges = [FileStore(f"e{i}-{first_offers}", tmp_path / f"e{i}-{first_offers}") for i in range(2)]
            sources = await asyncio.gather(*(pull(session, url, image_id, edge, compress=offers)
                                             for edge, offers in zip(edges, (first_offers, not first_offers),
                                                                     strict=True)))
            for edge in edges:
                assert await edge.read(image_id, 0, len(content)) == content
            compressing = sources[0] if first_offers else sources[1]
            plain = sources[1] if first_offers else sources[0]
            assert compressing.bytes_fetched < len(content) * 0.7 and plain.bytes_fetched == len(content)
            assert served.shared_ranges_total - before >= 2  # most ranges read once for both
    finally:
        await server.close()
