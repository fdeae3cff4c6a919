"""The replicator between two real file stores and a real journal: verified,
sparse, resumable copies; idempotent re-runs; deletes; failure codes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgesync.agent import replicator
from edgesync.agent.journal import Journal
from edgesync.agent.replicator import Checkpoints, failure_event
from edgesync.bus import CopyCommand, DeleteCommand
from edgesync.errors import (
    ChecksumMismatch,
    SizeMismatch,
    StoreFull,
    StoreImageExists,
    StoreImageInUse,
    StoreUnavailable,
)
from edgesync.observer import CopyObserver
from edgesync.stores.base import Extent
from edgesync.stores.file import FileStore
from edgesync.transfer.pipeline import StoreSource
from tests.fixtures.sparse_images import STRIPE, CountingSource, LinkDown, SampleImage, publish_image, read_image

EVERY_WRITE = Checkpoints(every_bytes=1)


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = await Journal.open(tmp_path / "journal.sqlite3")
    try:
        yield j
    finally:
        await j.close()


@pytest.fixture
def central(tmp_path: Path) -> FileStore:
    return FileStore("central", tmp_path / "central")


@pytest.fixture
def edge(tmp_path: Path) -> FileStore:
    return FileStore("dcn0", tmp_path / "dcn0")


async def command_for(journal: Journal, image: SampleImage, *, task_id: str = "t1",
                      os_hash_value: str | None = None) -> CopyCommand:
    """A copy command, journaled as the agent does before running it."""
    command = CopyCommand(task_id=task_id, image_id=image.image_id, size_bytes=image.size,
                          os_hash_value=os_hash_value or image.sha512, source_url="http://hub")
    await journal.record(command)
    return command


class Recorder(CopyObserver):
    """What the agent's metrics would be told."""

    def __init__(self) -> None:
        self.written_bytes = 0
        self.resumes = 0
        self.mismatches: list[str] = []

    def written(self, nbytes: int) -> None:
        self.written_bytes += nbytes

    def resumed(self) -> None:
        self.resumes += 1

    def digest_mismatch(self, kind: str) -> None:
        self.mismatches.append(kind)


def leftovers(store: FileStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir())


async def test_a_copy_is_identical_sparse_and_reports_progress(
        central: FileStore, edge: FileStore, journal: Journal) -> None:
    image = await publish_image(central)
    progress: list[tuple[int, int]] = []
    source = CountingSource(StoreSource(central, image.image_id))
    location = await replicator.copy(await command_for(journal, image), edge, journal, source,
                                     lambda done, total: progress.append((done, total)))
    assert location.store == "dcn0" and location.url == edge.location_url(image.image_id)
    assert await read_image(edge, image.image_id) == image.data
    assert await edge.allocated_bytes(image.image_id) <= image.data_bytes + 64 * 1024  # holes stayed holes
    assert source.bytes_fetched == image.data_bytes  # holes never fetched
    assert progress[-1] == (image.data_bytes, image.data_bytes)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)


async def test_a_checksum_mismatch_publishes_nothing(
        central: FileStore, edge: FileStore, journal: Journal) -> None:
    image = await publish_image(central)
    command = await command_for(journal, image, os_hash_value="00" * 64)
    with pytest.raises(ChecksumMismatch, match="nothing was published"):
        await replicator.copy(command, edge, journal, StoreSource(central, image.image_id),
                              checkpoints=EVERY_WRITE)
    assert not await edge.exists(image.image_id) and leftovers(edge) == []
    assert await journal.done_ranges("t1") == []
    event = failure_event("t1", ChecksumMismatch("x"))
    assert (event.code, event.retryable) == ("checksum_mismatch", False)


async def test_a_size_that_disagrees_with_the_command_is_refused(
        central: FileStore, edge: FileStore, journal: Journal) -> None:
    image = await publish_image(central, "DZ")
    command = CopyCommand(task_id="t1", image_id=image.image_id, size_bytes=image.size + 1,
                          os_hash_value=image.sha512, source_url="http://hub")
    await journal.record(command)
    with pytest.raises(SizeMismatch):
        await replicator.copy(command, edge, journal, StoreSource(central, image.image_id))
    assert leftovers(edge) == []


async def test_an_interrupted_copy_resumes_and_fetches_only_what_is_missing(
        central: FileStore, edge: FileStore, journal: Journal) -> None:
    image = await publish_image(central)
    command = await command_for(journal, image)
    first = CountingSource(StoreSource(central, image.image_id), fail_after_reads=4)
    with pytest.raises(LinkDown):
        await replicator.copy(command, edge, journal, first, checkpoints=EVERY_WRITE)
    # What was written is journaled; a range read ahead but never written is not.
    journaled = sum(e.length for e in await journal.done_ranges("t1"))
    assert 0 < journaled <= first.bytes_fetched
    assert not await edge.exists(image.image_id) and leftovers(edge) == [f"{image.image_id}.partial"]

    second = CountingSource(StoreSource(central, image.image_id))
    await replicator.copy(command, edge, journal, second)
    assert second.bytes_fetched == image.data_bytes - journaled
    assert await read_image(edge, image.image_id) == image.data


async def test_the_observer_is_told_bytes_written_resumes_and_mismatches(
        central: FileStore, edge: FileStore, journal: Journal) -> None:
    image = await publish_image(central)
    command = await command_for(journal, image)
    first, second = Recorder(), Recorder()
    with pytest.raises(LinkDown):
        await replicator.copy(command, edge, journal,
                              CountingSource(StoreSource(central, image.image_id), fail_after_reads=4),
                              checkpoints=EVERY_WRITE, observer=first)
    journaled = sum(e.length for e in await journal.done_ranges("t1"))
    assert (first.written_bytes, first.resumes) == (journaled, 0)
    await replicator.copy(command, edge, journal, StoreSource(central, image.image_id), observer=second)
    # The resumed copy writes only what the first one had not: data is written once in all.
    assert (second.written_bytes, second.resumes) == (image.data_bytes - journaled, 1)
    assert first.mismatches == second.mismatches == []

    bad = Recorder()
    other = await publish_image(central, "DZ", seed=2)
    with pytest.raises(ChecksumMismatch):
        await replicator.copy(await command_for(journal, other, task_id="t2", os_hash_value="00" * 64), edge,
                              journal, StoreSource(central, other.image_id), observer=bad)
    assert bad.mismatches == ["image"]


async def test_a_cancelled_copy_keeps_what_it_wrote(
        central: FileStore, edge: FileStore, journal: Journal) -> None:
    image = await publish_image(central)
    command = await command_for(journal, image)
    first = CountingSource(StoreSource(central, image.image_id), hold_after_reads=3)
    three_handed_to_the_store = asyncio.Event()

    def progress(done: int, total: int) -> None:
        if done >= 3 * STRIPE:
            three_handed_to_the_store.set()

    task = asyncio.create_task(replicator.copy(command, edge, journal, first, progress))
    await three_handed_to_the_store.wait()  # the fourth read is held: the copy is mid-way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sum(e.length for e in await journal.done_ranges("t1")) == 3 * STRIPE

    second = CountingSource(StoreSource(central, image.image_id))
    await replicator.copy(command, edge, journal, second)
    assert second.bytes_fetched == image.data_bytes - 3 * STRIPE
    assert await read_image(edge, image.image_id) == image.data


async def test_a_resumed_copy_that_lost_data_is_copied_again_from_scratch(
        central: FileStore, edge: FileStore, journal: Journal) -> None:
    image = await publish_image(central)
    command = await command_for(journal, image)
    with pytest.raises(LinkDown):
        await replicator.copy(command, edge, journal,
                              CountingSource(StoreSource(central, image.image_id), fail_after_reads=4),
                              checkpoints=EVERY_WRITE)
    partial = edge.root / f"{image.image_id}.partial"
    with partial.open("r+b") as fh:  # what a machine crash after the checkpoint could leave
        fh.write(b"\xff" * 4096)
    second = CountingSource(StoreSource(central, image.image_id))
    await replicator.copy(command, edge, journal, second)
    assert await read_image(edge, image.image_id) == image.data
    assert second.bytes_fetched > image.data_bytes  # the resumed part, then everything


async def test_a_copy_already_in_the_store_is_done_without_fetching(
        central: FileStore, edge: FileStore, journal: Journal) -> None:
    image = await publish_image(central)
    await replicator.copy(await command_for(journal, image), edge, journal, StoreSource(central, image.image_id))
    again = CountingSource(StoreSource(central, image.image_id))
    location = await replicator.copy(await command_for(journal, image, task_id="t2"), edge, journal, again)
    assert location.url == edge.location_url(image.image_id) and again.bytes_fetched == 0


async def test_a_different_image_under_the_same_id_is_not_replaced(
        central: FileStore, edge: FileStore, journal: Journal) -> None:
    image = await publish_image(central)
    await replicator.copy(await command_for(journal, image), edge, journal, StoreSource(central, image.image_id))
    with pytest.raises(StoreImageExists, match="different image"):
        await replicator.copy(await command_for(journal, image, task_id="t2", os_hash_value="00" * 64), edge, journal,
                              StoreSource(central, image.image_id))
    assert await read_image(edge, image.image_id) == image.data


async def test_delete_removes_the_copy_and_a_missing_copy_is_fine(central: FileStore, edge: FileStore,
                                                                  journal: Journal) -> None:
    image = await publish_image(central, "DZ")
    await replicator.copy(await command_for(journal, image), edge, journal, StoreSource(central, image.image_id))
    command = DeleteCommand(task_id="d1", image_id=image.image_id)
    await replicator.delete(command, edge)
    assert leftovers(edge) == []
    await replicator.delete(command, edge)  # again: already gone is done


@pytest.mark.parametrize("exc, code, retryable", [
    (StoreImageInUse("clones"), "in_use", False),
    (StoreFull("full"), "store_full", False),
    (StoreUnavailable("down"), "store_unavailable", True),
    (LinkDown("down"), "link_down", True),
    (RuntimeError("bug"), "internal", False),
])
def test_failure_codes(exc: BaseException, code: str, retryable: bool) -> None:
    event = failure_event("t1", exc)
    assert (event.task_id, event.code, event.retryable) == ("t1", code, retryable)
    assert str(exc) in event.reason


def test_segments_split_a_range_by_what_is_done() -> None:
    done = [Extent(10, 10), Extent(30, 5)]
    assert replicator._segments(done, 0, 40) == [
        (0, 10, False), (10, 20, True), (20, 30, False), (30, 35, True), (35, 40, False)]
    assert replicator._segments(done, 12, 5) == [(12, 17, True)]
    assert replicator._segments(done, 18, 4) == [(18, 20, True), (20, 22, False)]
    assert replicator._segments([], 5, 5) == [(5, 10, False)]
