"""Writing a byte stream into a sparse local file (staging, downloads).

`SparseFile` writes data with pwrite and leaves zero blocks as holes;
`copy_stream` feeds it from an async byte stream in fixed batches, enforcing
a size limit and optionally hashing on the way.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, Callable
from pathlib import Path

from edgesync.errors import EdgesyncError
from edgesync.importer.hashing import ImageDigest
from edgesync.stores.sparse import data_runs

BATCH_BYTES = 4 * 1024 * 1024


class SparseFile:
    """A local file written with pwrite where there is data, holes elsewhere."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    async def create(cls, path: Path) -> SparseFile:
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        except OSError as exc:
            raise EdgesyncError(f"cannot create {path}: {exc.strerror}") from exc
        return cls(path, fd)

    async def write(self, offset: int, data: bytes) -> None:
        await _finish_in_thread(self._write_sync, offset, data)

    def _write_sync(self, offset: int, data: bytes) -> None:
        assert self._fd is not None
        try:
            for rel, run in data_runs(data):
                os.pwrite(self._fd, run, offset + rel)
        except OSError as exc:
            raise EdgesyncError(f"cannot write {self.path}: {exc.strerror}") from exc

    async def finish(self, size: int) -> None:
        """Set the final length (a trailing hole is never written), make it
        durable (a rename may publish it next) and close."""
        await _finish_in_thread(self._finish_sync, size)

    def _finish_sync(self, size: int) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, size)
            os.fsync(self._fd)
        except OSError as exc:
            raise EdgesyncError(f"cannot write {self.path}: {exc.strerror}") from exc
        finally:
            self._close()

    async def discard(self) -> None:
        # Synchronous on purpose: this runs while a cancellation unwinds, when
        # another await could be interrupted and leave the file behind. Two
        # cheap syscalls.
        self._close()
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


async def _finish_in_thread(func: Callable[..., object], *args: object) -> None:
    # A thread can't be interrupted: on cancellation, wait for it to finish
    # before letting the caller close the fd it is writing to (the number
    # could be reused by another file meanwhile).
    work = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise



async def copy_stream(
    chunks: AsyncIterable[bytes],
    sink: SparseFile,
    *,
    max_bytes: int,
    too_large: Callable[[], EdgesyncError],
    digest: ImageDigest | None = None,
) -> int:
    """Copy `chunks` into `sink` in BATCH_BYTES batches; return the byte count.
    Raises `too_large()` as soon as the stream passes `max_bytes`."""
    batch = bytearray()
    offset = 0
    async for chunk in chunks:
        if offset + len(batch) + len(chunk) > max_bytes:
            raise too_large()
        batch += chunk
        while len(batch) >= BATCH_BYTES:
            piece = bytes(batch[:BATCH_BYTES])
            del batch[:BATCH_BYTES]
            await _write(sink, offset, piece, digest)
            offset += len(piece)
    if batch:
        await _write(sink, offset, bytes(batch), digest)
        offset += len(batch)
    return offset


async def _write(sink: SparseFile, offset: int, data: bytes, digest: ImageDigest | None) -> None:
    if digest is None:
        await sink.write(offset, data)
        return
    # Write and hash at once. If either fails or we are cancelled, stop and wait
    # for both before going on: the caller closes the fd next.
    both = [asyncio.ensure_future(sink.write(offset, data)), asyncio.ensure_future(digest.update(data))]
    try:
        await asyncio.gather(*both)
    except BaseException:
        for task in both:
            task.cancel()
        await asyncio.wait(both)
        raise
