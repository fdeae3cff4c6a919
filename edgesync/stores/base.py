"""The store interface, in domain terms.

A store holds at most one copy of each image, keyed by image id. Copies are
written through an `ImageWriter` under a name nobody else sees and become
visible only when `publish()` returns a location; `abort()` (or leaving the
writer's `async with` block with an exception) removes every trace.

Extents are the byte ranges of an image that hold data. Holes are never
written, never read for transfer, and stay holes in every store.

Two interfaces, every method of each required: `ImageStore` (and its
`ImageWriter`) is what the hub needs of a store; `ResumableStore` (and its
`ResumableWriter`) adds what a copy that survives interruptions needs (the
site agent's). Both drivers, file and rbd, are resumable.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from types import TracebackType
from typing import Any


@dataclass(frozen=True, order=True)
class Extent:
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class Location:
    store: str
    url: str

    def as_glance(self) -> dict[str, Any]:
        return {"url": self.url, "metadata": {"store": self.store}}


@dataclass(frozen=True)
class StoreCapacity:
    used_bytes: int
    free_bytes: int


class ImageWriter(abc.ABC):
    """A copy being written. Invisible until `publish()`."""

    image_id: str
    size_bytes: int

    @abc.abstractmethod
    async def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write `data` at `offset`; all-zero runs are left as holes."""

    @abc.abstractmethod
    async def publish(self) -> Location:
        """Make the copy visible (atomically) and return where it lives."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Remove the unpublished copy. Safe to call more than once."""

    def qemu_destination(self) -> str | None:
        """A `qemu-img convert -n` target writing straight into this copy, if
        the store has one (None: the importer writes through `write()`)."""
        return None

    async def __aenter__(self) -> ImageWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            await self.abort()


class ResumableWriter(ImageWriter):
    """A copy being written that can be interrupted and taken up again.

    A journal may only record a range as done once `flush()` made it
    durable; a resumed copy re-hashes those ranges with `read_back()` instead
    of fetching them again; and a copy interrupted on purpose ends with
    `suspend()`, which keeps the partial copy where `abort()` would remove it.
    """

    @abc.abstractmethod
    async def read_back(self, offset: int, length: int) -> bytes:
        """Bytes of the unpublished copy as written so far; unwritten ranges read as zeros."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Return once every write that returned before this call is durable.

        `write()` may return before the store has the data (RBD keeps a window
        of writes in flight).
        """

    @abc.abstractmethod
    async def suspend(self) -> None:
        """Stop writing and release the copy's handles, keeping the unpublished
        copy for a later `open_writer(..., resume=True)`. `abort()` still removes it."""

    async def __aenter__(self) -> ResumableWriter:
        return self


class ImageStore(abc.ABC):
    """One store (one per site). Implementations: file, rbd."""

    name: str
    type: str
    description: str = ""
    read_only: bool = False

    @abc.abstractmethod
    async def open_writer(self, image_id: str, size_bytes: int) -> ImageWriter:
        """Start an unpublished copy, discarding the leftovers of an earlier
        unpublished attempt. Raises StoreImageExists if a published copy exists."""

    @abc.abstractmethod
    async def extents(self, image_id: str) -> list[Extent]:
        """Data-bearing ranges of a published copy, sorted, non-overlapping."""

    @abc.abstractmethod
    async def read(self, image_id: str, offset: int, length: int) -> bytes:
        """Bytes of a published copy; holes read as zeros."""

    @abc.abstractmethod
    async def size(self, image_id: str) -> int:
        """Logical size of a published copy."""

    @abc.abstractmethod
    async def allocated_bytes(self, image_id: str) -> int:
        """Bytes the copy really occupies (holes excluded)."""

    @abc.abstractmethod
    async def exists(self, image_id: str) -> bool:
        """Whether a published copy exists."""

    async def why_unpublished(self, image_id: str) -> str:
        """What is missing for `image_id` to be a published copy here (for a
        message to whoever made it there: Nova, an operator)."""
        return f"store {self.name} holds no published copy of image {image_id}"

    @abc.abstractmethod
    async def delete(self, image_id: str) -> None:
        """Remove a published copy. StoreImageInUse if something depends on it."""

    @abc.abstractmethod
    async def ensure_deletable(self, image_id: str) -> None:
        """Raise StoreImageInUse if `delete` would be refused because something
        depends on the copy (an RBD snapshot with COW clones). Lets an image
        delete refuse before it removed anything anywhere."""

    @abc.abstractmethod
    async def image_ids(self) -> list[str]:
        """Ids of every published copy, sorted (a site's inventory)."""

    @abc.abstractmethod
    async def discard_unpublished(self, image_id: str) -> None:
        """Remove what an interrupted writer left (after a crash). No-op if none."""

    @abc.abstractmethod
    def location_url(self, image_id: str) -> str:
        """The URL a published copy of `image_id` has in this store."""

    @abc.abstractmethod
    def properties(self) -> dict[str, Any]:
        """Driver facts for `GET /v2/info/stores/detail` (`properties`)."""

    @abc.abstractmethod
    async def capacity(self) -> StoreCapacity | None:
        """Used and free bytes, or None where the backend can't tell."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. The store is unusable afterwards."""


class ResumableStore(ImageStore):
    """A store whose unpublished copies survive an interruption and can be
    taken up again (what the site agent's copies need)."""

    @abc.abstractmethod
    async def open_writer(self, image_id: str, size_bytes: int, *, resume: bool = False) -> ResumableWriter:
        """Start an unpublished copy or, with `resume`, reopen the one an
        earlier attempt left (starting afresh if there is none). Without
        `resume`, leftovers are discarded. Raises StoreImageExists if a
        published copy exists."""
