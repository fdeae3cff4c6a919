"""The seam through which the hub has copies made between stores.

`Replicator` is what the import orchestration calls; it never touches store
internals. `InHubReplicator` does the copy inside the hub process, reading
from the source store and writing the destination store through the store
interface — unless the destination is a site's agent (`RemoteStore`), which
then makes the copy itself, pulling from the hub. `failure_reason` names
why a copy failed, for the metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from edgesync.errors import (
    EdgesyncError,
    SizeMismatch,
    StoreError,
    StoreFull,
    StoreImageExists,
    StoreImageInUse,
    StoreUnavailable,
)
from edgesync.hub.remote import AgentTaskFailed, RemoteStore, SiteOffline
from edgesync.metrics import FAILURE_REASONS, NO_OBSERVER, CopyObserver
from edgesync.model import Image
from edgesync.stores.base import ImageStore, Location
from edgesync.transfer.http import TransferError
from edgesync.transfer.pipeline import CopyProgressFn, MeasuredSource, ProgressFn, StoreSource, pump

log = logging.getLogger(__name__)


class DigestMismatch(StoreError):
    """Data read back doesn't hash to the image's os_hash_value."""

    retryable = True


class Replicator(Protocol):
    async def replicate(self, image: Image, source: str, dest: str, on_progress: CopyProgressFn,
                        *, job_id: str, resume: bool = False) -> Location:
        """Make a verified, published copy of `image` from store `source` in
        `dest`, reporting (data bytes done, data bytes in all) as it goes.
        `job_id` names this copy: repeating it is harmless. `resume`: a
        previous hub run started this copy (a site's agent may still be
        making it)."""

    async def remove(self, image_id: str, store: str) -> None:
        """Delete the copy of `image_id` in `store`."""


class InHubReplicator:
    def __init__(self, stores: dict[str, ImageStore],
                 observers: Callable[[str], CopyObserver] = lambda _site: NO_OBSERVER) -> None:
        """`observers(site)` is told what copies into `site`'s store write."""
        self._stores = stores
        self._observers = observers

    async def replicate(self, image: Image, source: str, dest: str, on_progress: CopyProgressFn,
                        *, job_id: str, resume: bool = False) -> Location:
        assert image.size is not None and image.os_hash_value, "only active images are copied"
        target = self._stores[dest]
        if isinstance(target, RemoteStore):  # the site's agent copies
            return await target.replicate(image, job_id, on_progress, resume=resume)
        try:
            writer = await target.open_writer(image.id, image.size)
        except StoreImageExists:
            # A copy published by an attempt the catalog never recorded (the
            # hub died between publish and commit): nothing references it.
            log.warning("replacing unrecorded copy of %s in %s", image.id, dest)
            await target.delete(image.id)
            writer = await target.open_writer(image.id, image.size)
        data = MeasuredSource(StoreSource(self._stores[source], image.id))
        observer = self._observers(dest)
        async with writer:
            digest = await pump(data, writer, size=image.size,
                                on_progress=_counting(data.reporting_to(on_progress), observer), with_md5=False)
            if digest.os_hash_value != image.os_hash_value:
                observer.digest_mismatch("image")
                raise DigestMismatch(
                    f"copy of {image.id} to {dest} does not match os_hash_value; not published"
                )
            return await writer.publish()

    async def remove(self, image_id: str, store: str) -> None:
        await self._stores[store].delete(image_id)


def _counting(on_progress: ProgressFn, observer: CopyObserver) -> ProgressFn:
    """`on_progress`, also telling `observer` the bytes written since the last call."""
    counted = 0

    async def progress(done_bytes: int) -> None:
        nonlocal counted
        observer.written(done_bytes - counted)
        counted = done_bytes
        await on_progress(done_bytes)

    return progress


# An agent's FailedEvent codes (agent.replicator.failure_event) as reasons.
_AGENT_CODES = {"transfer_error": "transfer", "chunk_digest_mismatch": "transfer"}

_REASONS_BY_CLASS: list[tuple[type[BaseException], str]] = [
    (SiteOffline, "site_offline"),
    (DigestMismatch, "checksum_mismatch"),
    (TransferError, "transfer"),
    (StoreImageInUse, "in_use"),
    (StoreImageExists, "image_exists"),
    (SizeMismatch, "size_mismatch"),
    (StoreFull, "store_full"),
    (StoreUnavailable, "store_unavailable"),
    (StoreError, "store_error"),
]


def failure_reason(exc: BaseException) -> str:
    """Why a copy failed, as one of the closed set of `FAILURE_REASONS`
    (a metric label: never free text)."""
    if isinstance(exc, AgentTaskFailed) and exc.code:
        code = _AGENT_CODES.get(exc.code, exc.code)
        return code if code in FAILURE_REASONS else "store_error"
    for cls, reason in _REASONS_BY_CLASS:
        if isinstance(exc, cls):
            return reason
    return "store_error" if isinstance(exc, EdgesyncError) else "internal"
