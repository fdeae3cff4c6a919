"""The staging area: where uploaded and downloaded image data waits for import.

One sparse file per image (`<id>`), plus `<id>.raw` when the import converts
it. Zero blocks of incoming data are skipped, so a half-empty image takes half
the space. Every failure removes what was written: nothing is left behind.
Data being received goes to `<id>.partial` and is renamed to `<id>` only once
whole and of the declared size, so a crash mid-upload never leaves something
that passes for staged data.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from edgesync.errors import BadRequest, RequestTooLarge
from edgesync.stores.sparse import data_runs

BUFFER_BYTES = 4 * 1024 * 1024


class SparseFileSink:
    """Appends a byte stream to a file, leaving zero blocks as holes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        self._buffer = bytearray()
        self.size = 0

    @property
    def received(self) -> int:
        return self.size + len(self._buffer)

    async def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= BUFFER_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        block, self._buffer = bytes(self._buffer), bytearray()
        offset = self.size
        self.size += len(block)
        await asyncio.to_thread(_write_runs, self._fd, block, offset)

    async def close(self) -> int:
        """Flush, set the final length (a trailing hole included), fsync."""
        await self._flush()
        await asyncio.to_thread(_finish, self._fd, self.size)
        self._fd = -1
        return self.size

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)


def _write_runs(fd: int, block: bytes, offset: int) -> None:
    for rel, run in data_runs(block):
        os.pwrite(fd, run, offset + rel)


def _finish(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


class Staging:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, image_id: str) -> Path:
        return self.root / image_id

    def converted_path(self, image_id: str) -> Path:
        return self.root / f"{image_id}.raw"

    def partial_path(self, image_id: str) -> Path:
        return self.root / f"{image_id}.partial"

    def has(self, image_id: str) -> bool:
        return self.path(image_id).exists()

    async def receive(
        self,
        image_id: str,
        chunks: AsyncIterator[bytes],
        *,
        expected_size: int | None,
        max_bytes: int,
    ) -> int:
        """Stream an upload into the staging file; check its size; on any
        failure (including a client that goes away) remove it."""
        sink = SparseFileSink(self.partial_path(image_id))
        try:
            async for chunk in chunks:
                if sink.received + len(chunk) > max_bytes:
                    raise RequestTooLarge(
                        f"Image data exceeds the hub's limit of {max_bytes} bytes "
                        "(import.max_image_size_bytes)"
                    )
                await sink.write(chunk)
            size = await sink.close()
        except BaseException:
            sink.discard()
            raise
        if expected_size is not None and size != expected_size:
            self.discard(image_id)
            raise BadRequest(
                f"Uploaded {size} bytes but x-openstack-image-size said "
                f"{expected_size}; send the whole file with its real size"
            )
        os.replace(sink.path, self.path(image_id))
        return size

    def discard(self, image_id: str) -> None:
        for path in (self.path(image_id), self.converted_path(image_id), self.partial_path(image_id)):
            path.unlink(missing_ok=True)

    def staged_ids(self) -> list[str]:
        return sorted({p.name.split(".")[0] for p in self.root.iterdir()})
