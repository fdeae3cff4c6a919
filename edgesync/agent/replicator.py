"""One task's work: copy an image into the site's store, or delete it from there.

A copy is resumable and verified:

- The journal's done ranges say what an earlier attempt already wrote
  durably. If there are some, the unpublished copy is reopened
  (`resume=True`) and those ranges are read back from it instead of being
  fetched again (`_ResumingSource`); writes of them are skipped. Without
  any, the copy starts afresh and leftovers are discarded.
- Ranges are journaled only once durable: writes are noted as they return,
  and every `checkpoint_bytes` or `checkpoint_interval_s` the writer is
  flushed and the noted ranges written to the journal (`_JournaledWriter`).
- A command that names a chunk manifest (a hub that makes them) is copied
  through `dedup.CheckedSource`: every block checked against the manifest,
  blocks the site holds taken from its copies, nothing else hashed; the
  manifest is kept with the published copy, for the next copy's dedup.
  Without one (an older hub):
- The sha512 of the whole logical image (`pump`'s digest, which covers the
  read-back ranges too, so a local copy that lost data is caught) must equal
  `os_hash_value` before `publish()`; otherwise the copy is removed and
  nothing is published. A resumed copy that fails the check is copied once
  more from scratch before the mismatch is reported: the local partial copy
  may be what is wrong (a machine crash after a checkpoint).
- Interrupted (cancelled, or failing in a way a retry may fix) the copy
  keeps its partial copy and its journal: the writes in flight finish, the
  writer is flushed, checkpointed and suspended. Failing for good, it is
  removed and its ranges forgotten.

Idempotent: a copy of an image the store already holds with the right hash
succeeds with that copy's location (a command delivered again after the
first run finished, under a new task id).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edgesync.agent.dedup import CheckedSource, SiteCopies
from edgesync.agent.journal import Journal
from edgesync.bus.messages import CopyCommand, DeleteCommand, FailedEvent
from edgesync.errors import (
    ChecksumMismatch,
    EdgesyncError,
    SizeMismatch,
    StoreImageExists,
    StoreImageNotFound,
    failure_code,
)
from edgesync.observer import NO_OBSERVER, CopyObserver
from edgesync.stores.base import Extent, ImageStore, Location, ResumableStore, ResumableWriter
from edgesync.transfer.manifest import InvalidManifest, Manifest
from edgesync.transfer.pipeline import Counted, DataSource, digest_published, pump, pump_into

log = logging.getLogger(__name__)

# As transfer.pipeline.CopyProgressFn, (data bytes done, data bytes in all),
# but called without waiting: the agent only queues a progress event.
SyncCopyProgressFn = Callable[[int, int], None]

CHECKPOINT_BYTES = 64 << 20
CHECKPOINT_INTERVAL_S = 1.0


class UnsupportedHash(EdgesyncError):
    http_status = 400
    title = "Bad Request"


@dataclass(frozen=True)
class Checkpoints:
    """How often a copy makes its progress durable: bytes written, or time."""

    every_bytes: int = CHECKPOINT_BYTES
    every_s: float = CHECKPOINT_INTERVAL_S


# --- copy ---------------------------------------------------------------------------


async def copy(
    command: CopyCommand,
    store: ResumableStore,
    journal: Journal,
    source: DataSource,
    progress: SyncCopyProgressFn | None = None,
    *,
    checkpoints: Checkpoints = Checkpoints(),
    observer: CopyObserver = NO_OBSERVER,
    site: SiteCopies | None = None,
) -> Location:
    """Copy `source` into `store` as `command.image_id`, verified; its location.
    `observer` is told the bytes written, a resume, a digest mismatch.
    `site`: the manifests of the site's copies (dedup; without it, a copy
    with a manifest is still checked against it, but takes nothing local)."""
    if command.os_hash_algo != "sha512":
        raise UnsupportedHash(f"can't verify image {command.image_id}: os_hash_algo "
                              f"{command.os_hash_algo!r} (only sha512 is supported)")
    if await store.exists(command.image_id):
        return await _existing_copy(command, store)
    size = await source.size()
    if size != command.size_bytes:
        raise SizeMismatch(f"the source of image {command.image_id} has {size} bytes, "
                           f"the command says {command.size_bytes}")
    done = await journal.done_ranges(command.task_id)
    if done:
        observer.resumed()
    manifest = await _manifest_for(command, source)
    attempt = _CopyAttempt(command, store, journal, source, progress, checkpoints, observer, manifest,
                           site or SiteCopies(None))
    try:
        return await attempt.run(done)
    except ChecksumMismatch:
        if not done or manifest is not None:
            raise
        log.warning("task %s: the resumed copy of image %s did not verify; copying it again from scratch",
                    command.task_id, command.image_id)
        return await attempt.run([])


async def _manifest_for(command: CopyCommand, source: DataSource) -> Manifest | None:
    """The manifest the command names, fetched from the source and checked
    against the command. If it can't be had the copy goes on without it,
    verified against os_hash_value: the manifest saves work, the sha512
    alone already proves the copy."""
    fetch = getattr(source, "manifest", None)
    if command.manifest_digest is None or fetch is None:
        return None
    body = await fetch()
    try:
        if body is None:
            raise InvalidManifest("the source has none")
        manifest = Manifest.decode(body)
        manifest.belongs_to(digest=command.manifest_digest, size=command.size_bytes,
                            os_hash_value=command.os_hash_value)
    except InvalidManifest as exc:
        log.warning("task %s: no usable manifest for image %s (%s); verifying its sha512 instead",
                    command.task_id, command.image_id, exc.message)
        return None
    return manifest


async def _existing_copy(command: CopyCommand, store: ImageStore) -> Location:
    """The location of the copy already in the store, if it is this very image."""
    digest = await digest_published(store, command.image_id)
    if digest.size != command.size_bytes or digest.os_hash_value != command.os_hash_value:
        raise StoreImageExists(
            f"store {store.name} already holds a different image under id {command.image_id} "
            f"({digest.size} bytes, sha512 {digest.os_hash_value[:16]}…); not replacing it")
    log.info("task %s: store %s already holds image %s", command.task_id, store.name, command.image_id)
    return Location(store.name, store.location_url(command.image_id))


@dataclass
class _CopyAttempt:
    command: CopyCommand
    store: ResumableStore
    journal: Journal
    source: DataSource
    progress: SyncCopyProgressFn | None
    checkpoints: Checkpoints
    observer: CopyObserver
    manifest: Manifest | None
    site: SiteCopies

    async def run(self, done: list[Extent]) -> Location:
        task_id, image_id = self.command.task_id, self.command.image_id
        if not done:
            await self.journal.clear_done(task_id)
        writer = await self.store.open_writer(image_id, self.command.size_bytes, resume=bool(done))
        journaled = _JournaledWriter(writer, self.journal, task_id, done, self.checkpoints, self.observer)
        try:
            describe = await self._pump(writer, journaled, done)
            await journaled.settle()
        except BaseException as exc:
            await asyncio.shield(self._interrupted(writer, journaled, exc))
            raise
        location = await self._publish(writer)
        if self.manifest is not None:
            await self.site.keep(image_id, self.manifest)
        log.info("task %s: image %s copied (%s", task_id, image_id, describe())
        return location

    async def _pump(self, writer: ResumableWriter, journaled: _JournaledWriter,
                    done: list[Extent]) -> Callable[[], str]:
        """Copy every block, checked; say where the bytes came from."""
        size = self.command.size_bytes
        if self.manifest is not None:
            checked = CheckedSource(self.source, self.manifest, store=self.store,  # type: ignore[arg-type]
                                    local=self.site.blocks, writer=writer, done=done, observer=self.observer)
            await pump_into(Counted(), checked, journaled, size=size, on_progress=self._on_progress(checked))
            c = checked.counts
            return lambda: (f"{c.read_back} bytes read back locally, {c.fetched} fetched) against its manifest "
                            f"({c.local} bytes taken from the site's copies, {c.zero} zero, "
                            f"{c.refetched_blocks} blocks fetched again")
        source = _ResumingSource(self.source, writer, done)
        digest = await pump(source, journaled, size=size, with_md5=False, on_progress=self._on_progress(source))
        if digest.os_hash_value != self.command.os_hash_value:
            self.observer.digest_mismatch("image")
            raise ChecksumMismatch(
                f"image {self.command.image_id}: the copied bytes hash to sha512 {digest.os_hash_value[:16]}…, "
                f"not the image's os_hash_value {self.command.os_hash_value[:16]}…; nothing was published")
        return lambda: f"{source.bytes_read_back} bytes read back locally, {source.bytes_fetched} fetched)"

    def _on_progress(self, source: _ResumingSource | CheckedSource) -> Callable[[int], Awaitable[None]]:
        async def on_progress(bytes_done: int) -> None:
            if self.progress is not None:
                self.progress(bytes_done, source.data_bytes)
        return on_progress

    async def _publish(self, writer: ResumableWriter) -> Location:
        """Publish the verified copy. A cancellation waits for the publish to
        finish rather than leave it half done; the next run then finds the
        published copy."""
        publishing = asyncio.ensure_future(writer.publish())
        try:
            return await asyncio.shield(publishing)
        except asyncio.CancelledError:
            await asyncio.wait([publishing])
            if not publishing.cancelled() and publishing.exception() is not None:
                log.error("task %s: publishing image %s failed: %s", self.command.task_id,
                          self.command.image_id, publishing.exception())
            raise
        except BaseException:
            await asyncio.shield(self._discard(writer))
            raise

    async def _interrupted(self, writer: ResumableWriter, journaled: _JournaledWriter, exc: BaseException) -> None:
        """Keep the partial copy for a later attempt, or remove it for good.

        Best effort: the error that interrupted the copy is what the caller
        must see. What can't be journaled now is fetched again later; a
        partial copy left behind is discarded by the next fresh attempt.
        """
        await journaled.settle()
        if not _keeps_partial(exc):
            await self._discard(writer)
            return
        try:
            await journaled.checkpoint()
        except Exception as checkpoint_exc:  # noqa: BLE001 — see the docstring
            log.warning("task %s: could not checkpoint the interrupted copy: %s", self.command.task_id,
                        checkpoint_exc)
        try:
            await writer.suspend()
        except Exception as suspend_exc:  # noqa: BLE001 — see the docstring
            log.warning("task %s: could not suspend the interrupted copy: %s", self.command.task_id,
                        suspend_exc)

    async def _discard(self, writer: ResumableWriter) -> None:
        try:
            await writer.abort()
        except Exception as abort_exc:  # noqa: BLE001 — the next fresh attempt discards leftovers
            log.warning("task %s: could not remove the failed copy of image %s: %s", self.command.task_id,
                        self.command.image_id, abort_exc)
        await self.journal.clear_done(self.command.task_id)


def _keeps_partial(exc: BaseException) -> bool:
    """Whether what the copy wrote is worth keeping for a retry."""
    if isinstance(exc, asyncio.CancelledError):
        return True
    return isinstance(exc, EdgesyncError) and exc.retryable


class _JournaledWriter:
    """A writer that journals what it wrote, once durable, and skips what an
    earlier attempt already wrote.

    The store write runs in its own task, shielded: pump cancels writes when
    it fails or is cancelled, and a store write cut short can cost the whole
    partial copy (RBD aborts its copy then). `settle()` waits for them.
    """

    def __init__(self, inner: ResumableWriter, journal: Journal, task_id: str, done: list[Extent],
                 checkpoints: Checkpoints, observer: CopyObserver) -> None:
        self.inner = inner
        self.image_id = inner.image_id
        self.size_bytes = inner.size_bytes
        self._journal = journal
        self._task_id = task_id
        self._done = done
        self._checkpoints = checkpoints
        self._observer = observer
        self._writes: set[asyncio.Task[None]] = set()
        self._written: list[tuple[int, int]] = []  # returned from the store, not yet journaled
        self._unjournaled_bytes = 0
        self._last_checkpoint = time.monotonic()
        self._checkpointing = asyncio.Lock()

    async def write(self, offset: int, data: bytes | memoryview) -> None:
        length = memoryview(data).nbytes
        if _covered(self._done, offset, length):
            return  # read back from this very copy: it is there already
        task = asyncio.create_task(self._write(offset, data, length))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        await asyncio.shield(task)
        if self._checkpoint_due():
            await self.checkpoint()

    async def _write(self, offset: int, data: bytes | memoryview, length: int) -> None:
        await self.inner.write(offset, data)
        self._observer.written(length)
        self._written.append((offset, length))
        self._unjournaled_bytes += length

    def _checkpoint_due(self) -> bool:
        c = self._checkpoints
        return (self._unjournaled_bytes >= c.every_bytes
                or time.monotonic() - self._last_checkpoint >= c.every_s)

    async def checkpoint(self) -> None:
        """Flush the store, then journal every range written before the flush."""
        async with self._checkpointing:
            written, self._written = self._written, []
            self._unjournaled_bytes = 0
            self._last_checkpoint = time.monotonic()
            if not written:
                return
            try:
                await self.inner.flush()
                for offset, length in written:
                    await self._journal.add_done(self._task_id, offset, length)
                await self._journal.flush_done()
            except BaseException:
                self._written[:0] = written  # not journaled: try again next time
                raise

    async def settle(self) -> None:
        """Wait for every store write started, whatever becomes of each (the
        shields in `write()` retrieve their failures)."""
        while self._writes:
            await asyncio.wait(set(self._writes))


class _ResumingSource:
    """The remote source, except for ranges already written: those are read
    back from the local unpublished copy, so the image digest still covers
    every byte while only missing ranges cross the network."""

    def __init__(self, remote: DataSource, writer: ResumableWriter, done: list[Extent]) -> None:
        self._remote = remote
        self._writer = writer
        self._done = done
        self.data_bytes = 0
        self.bytes_read_back = 0
        self.bytes_fetched = 0

    async def size(self) -> int:
        return await self._remote.size()

    async def extents(self) -> list[Extent]:
        extents = await self._remote.extents()
        self.data_bytes = sum(e.length for e in extents)
        return extents

    async def read(self, offset: int, length: int) -> bytes:
        parts = []
        for start, end, local in _segments(self._done, offset, length):
            if local:
                parts.append(await self._writer.read_back(start, end - start))
                self.bytes_read_back += end - start
            else:
                parts.append(await self._remote.read(start, end - start))
                self.bytes_fetched += end - start
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _segments(done: list[Extent], offset: int, length: int) -> list[tuple[int, int, bool]]:
    """[offset, offset+length) cut into (start, end, already done) pieces.
    `done` is sorted and merged."""
    end = offset + length
    pieces: list[tuple[int, int, bool]] = []
    pos = offset
    i = max(0, bisect.bisect_right(done, Extent(offset, 0)) - 1)
    for extent in done[i:]:
        if extent.offset >= end:
            break
        if extent.end <= pos:
            continue
        if extent.offset > pos:
            pieces.append((pos, extent.offset, False))
            pos = extent.offset
        covered_to = min(extent.end, end)
        pieces.append((pos, covered_to, True))
        pos = covered_to
    if pos < end:
        pieces.append((pos, end, False))
    return pieces


def _covered(done: list[Extent], offset: int, length: int) -> bool:
    pieces = _segments(done, offset, length)
    return len(pieces) == 1 and pieces[0][2]


# --- delete ---------------------------------------------------------------------------


async def delete(command: DeleteCommand, store: ImageStore, site: SiteCopies | None = None) -> None:
    """Remove the site's copy; a copy that is already gone is fine (the goal
    is its absence). StoreImageInUse if COW clones depend on it."""
    try:
        await store.delete(command.image_id)
    except StoreImageNotFound:
        log.info("task %s: store %s holds no copy of image %s; nothing to delete",
                 command.task_id, store.name, command.image_id)
    await store.discard_unpublished(command.image_id)
    if site is not None:
        await site.forget(command.image_id)


# --- failures as the hub sees them -------------------------------------------------------


def failure_event(task_id: str, exc: BaseException) -> FailedEvent:
    """The FailedEvent for a task that raised `exc`: a machine-readable code,
    whether the hub may retry, and the message an operator reads."""
    if not isinstance(exc, EdgesyncError):
        return FailedEvent(task_id=task_id, reason=f"internal error: {type(exc).__name__}: {exc}",
                           retryable=False, code=failure_code(exc))
    return FailedEvent(task_id=task_id, reason=exc.message, retryable=exc.retryable, code=failure_code(exc))
