"""The staging area: where uploaded and downloaded image data waits for import.

One sparse file per image (`<id>`), plus `<id>.raw` when the import converts
it. Zero blocks of incoming data are skipped, so a half-empty image takes half
the space. Every failure removes what was written: nothing is left behind.
Data being received goes to `<id>.partial` and is renamed to `<id>` only once
whole and of the declared size, so a crash mid-upload never leaves something
that passes for staged data.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

from edgesync.errors import BadRequest, EdgesyncError, RequestTooLarge
from edgesync.importer.sparsefile import SparseFile, copy_stream


def refuse_declared_overrun(content_length: int | None, expected_size: int | None, max_bytes: int) -> None:
    """A body whose Content-Length already says it is larger than its
    x-openstack-image-size or the hub's limit is refused before a byte of it
    is read (the client may stop sending at once)."""
    if content_length is None:
        return
    if expected_size is not None and content_length > expected_size:
        raise BadRequest(f"Content-Length {content_length} is more than x-openstack-image-size "
                         f"{expected_size}; send the whole file with its real size")
    if content_length > max_bytes:
        raise RequestTooLarge(f"Image data of {content_length} bytes (Content-Length) exceeds the hub's limit "
                              f"of {max_bytes} bytes (import.max_image_size_bytes)")


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

    def staged_bytes(self, image_id: str) -> int:
        """The staged data's length (0 while none is whole)."""
        try:
            return self.path(image_id).stat().st_size
        except FileNotFoundError:
            return 0

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
        sink = await SparseFile.create(self.partial_path(image_id))
        # Stop reading at the first byte past the declared size (or the limit), not at the body's end.
        declared = expected_size is not None and expected_size < max_bytes
        limit = expected_size if declared and expected_size is not None else max_bytes

        def too_large() -> EdgesyncError:
            if declared:
                return BadRequest(f"Uploaded more than {expected_size} bytes but x-openstack-image-size said "
                                  f"{expected_size}; send the whole file with its real size")
            return RequestTooLarge(f"Image data exceeds the hub's limit of {max_bytes} bytes "
                                   "(import.max_image_size_bytes)")

        try:
            size = await copy_stream(chunks, sink, max_bytes=limit, too_large=too_large)
            await sink.finish(size)
        except BaseException:
            await sink.discard()
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
