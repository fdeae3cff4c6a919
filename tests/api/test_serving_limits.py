"""The hub's limits on what it serves to sites (`[transfers]` in hub.toml,
issue 12 item 5): a site's data requests beyond `per_site_concurrency` wait
their turn before their range is read, and all sites together get no more
than `egress_limit_mbps`.

Real hub, real file stores, the sites' real agent tokens; the concurrency
test holds central's store reads at a gate and counts, the egress test
bounds the bytes sent by the time they took (a loaded machine only makes
that time longer, never the bound false).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from edgesync.config import load_hub
from edgesync.errors import ConfigError
from edgesync.transfer.serving_limits import SLICE_BYTES
from tests.api.conftest import (
    Api,
    Caller,
    Gate,
    MiB,
    Source,
    copy,
    gate_store_writes,
    running_api,
    sparse_bytes,
    until,
    write_hub_files,
)

DATA = "/edgesync/v1/images/{}/data"
ODD_LENGTH = 12345  # no copy's pump asks for this: only the test's requests meet the read gate


def with_transfers(directory: Path, source: Source, table: str) -> Path:
    hub_toml = write_hub_files(directory, source_port=source.port)
    hub_toml.write_text(hub_toml.read_text() + f"\n[transfers]\n{table}\n")
    return directory


@pytest.fixture
async def limited_api(tmp_path: Path, source: Source) -> AsyncIterator[Api]:
    async with running_api(with_transfers(tmp_path, source, "per_site_concurrency = 2")) as api:
        yield api


@pytest.fixture
async def egress_api(tmp_path: Path, source: Source) -> AsyncIterator[Api]:
    async with running_api(with_transfers(tmp_path, source, "egress_limit_mbps = 8")) as api:  # 1 MB/s
        yield api


async def copying_to_both_edges(api: Api, monkeypatch: pytest.MonkeyPatch, data: bytes) -> tuple[str, list[Gate]]:
    """An image whose copy to dcn0 and dcn1 stays open (their writes held
    until the gates open), so both sites' agents may read it."""
    image = await api.active_image(data)
    gates = [gate_store_writes(monkeypatch, api.hub, site) for site in ("dcn0", "dcn1")]
    await api.p1.import_(image["id"], copy(["dcn0", "dcn1"]))
    for gate in gates:
        await gate.wait_entered()
    return str(image["id"]), gates


class ReadGate:
    """Holds central's store reads of ODD_LENGTH bytes until opened, counting them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, api: Api) -> None:
        self.waiting = 0
        self.most_at_once = 0
        self.released = asyncio.Event()
        store = api.hub.stores["central"]
        real_read: Callable[..., Awaitable[bytes]] = store.read

        async def read(image_id: str, offset: int, length: int) -> bytes:
            if length == ODD_LENGTH:
                self.waiting += 1
                self.most_at_once = max(self.most_at_once, self.waiting)
                await self.released.wait()
                self.waiting -= 1
            return await real_read(image_id, offset, length)

        monkeypatch.setattr(store, "read", read)


async def get_range(caller: Caller, image_id: str, offset: int, length: int) -> bytes:
    async with caller.get(DATA.format(image_id), params={"offset": str(offset), "length": str(length)}) as resp:
        assert resp.status == 200, await resp.text()
        return bytes(await resp.read())


async def test_a_sites_requests_past_its_limit_wait_before_their_range_is_read(
        limited_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api = limited_api
    data = sparse_bytes(2 * MiB, [(0, 2 * MiB)], seed=7)
    image_id, gates = await copying_to_both_edges(api, monkeypatch, data)
    reads = ReadGate(monkeypatch, api)
    limits = api.hub.serving_limits
    offsets = [k * ODD_LENGTH for k in range(8)]  # distinct ranges: no two share a read
    requests = [asyncio.create_task(get_range(api.agent0, image_id, o, ODD_LENGTH)) for o in offsets[:6]]
    requests += [asyncio.create_task(get_range(api.agent1, image_id, o, ODD_LENGTH)) for o in offsets[6:]]

    # dcn0's six: two reading, four waiting their turn; dcn1's two read beside them.
    async def all_arrived() -> bool:
        return reads.waiting == 4 and limits.waited_total == 4

    await until(all_arrived)
    assert limits.in_flight["dcn0"] == 2 and limits.in_flight["dcn1"] == 2
    reads.released.set()
    bodies = await asyncio.gather(*requests)

    assert bodies == [data[o:o + ODD_LENGTH] for o in offsets]
    assert reads.most_at_once == 4
    assert limits.peak_in_flight["dcn0"] == 2 and limits.in_flight["dcn0"] == 0
    metrics = await (await api.admin.get("/metrics")).text()
    assert 'edgesync_transfer_site_requests_in_flight_max{site="dcn0"} 2.0' in metrics
    assert "edgesync_transfer_requests_waited_total 4.0" in metrics
    for gate in gates:
        gate.open()
    await api.wait_idle()


async def test_all_sites_together_get_no_more_than_the_egress_limit(
        egress_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api = egress_api
    data = sparse_bytes(4 * MiB, [(0, 4 * MiB)], seed=8)  # random: nothing compresses (none offered anyway)
    image_id, gates = await copying_to_both_edges(api, monkeypatch, data)
    rate = 1_000_000  # bytes/s: 8 Mbit/s
    ranges = [(api.agent0, 0), (api.agent0, MiB // 2), (api.agent1, MiB), (api.agent1, 3 * MiB // 2)]
    sent_before = api.hub.serving_limits.sent_bytes
    start = time.monotonic()
    bodies = await asyncio.gather(*(get_range(caller, image_id, offset, MiB // 2) for caller, offset in ranges))
    elapsed = time.monotonic() - start

    assert bodies == [data[o:o + MiB // 2] for _, o in ranges]
    sent = api.hub.serving_limits.sent_bytes - sent_before
    assert sent == 2 * MiB
    # A token bucket sends at most its burst (a quarter second of the rate, or a slice) plus the rate
    # times the time, plus the one slice that takes it into debt — per hub, not per site or request.
    assert sent <= max(rate // 4, SLICE_BYTES) + SLICE_BYTES + rate * elapsed, \
        f"{sent} bytes in {elapsed:.2f} s at {rate} B/s"
    for gate in gates:
        gate.open()
    await api.wait_idle()


@pytest.mark.parametrize(("table", "message"), [
    ("per_site_concurrency = 0", "'per_site_concurrency' must be at least 1"),
    ("per_site = 3", "unknown setting"),
    ("egress_limit_mbps = -1", "'egress_limit_mbps' must be 0 (unlimited) or more"),
    ('egress_limit_mbps = "fast"', "'egress_limit_mbps' must be"),
])
def test_bad_limits_are_refused_naming_the_key(tmp_path: Path, source: Source, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"\\[transfers\\]: {message}".replace("(", "\\(").replace(")", "\\)")):
        load_hub(with_transfers(tmp_path, source, table) / "hub.toml")


def test_the_limits_are_read_from_hub_toml(tmp_path: Path, source: Source) -> None:
    table = "per_site_concurrency = 3\negress_limit_mbps = 200"
    config = load_hub(with_transfers(tmp_path, source, table) / "hub.toml")
    limits = config.transfers
    assert (limits.per_site_concurrency, limits.egress_bytes_per_s) == (3, 25_000_000)
    assert load_hub(write_hub_files(tmp_path / "plain", source_port=source.port)).transfers.egress_limit_mbps == 0
