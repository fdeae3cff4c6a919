"""The cache of read-only handles on published snapshots (see `SnapshotHandles`)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import rbd

# Read-only snapshot handles kept open between reads.
CACHED_HANDLES = 8
HANDLE_IDLE_S = 10.0


@dataclass(eq=False)
class _Handle:
    image: rbd.Image
    users: int = 0
    last_used: float = 0.0
    evicted: bool = False


class SnapshotHandles:
    """Read-only handles on published snapshots, shared by concurrent reads.

    Opening an image takes several round trips (~6 ms here, as long as
    reading 4 MiB), and a transfer reads one image chunk after chunk: sharing
    one handle doubles read throughput. A handle is kept while in use and
    for HANDLE_IDLE_S after, at most CACHED_HANDLES of them. A published
    snapshot never changes, so a cached handle serves current data as long as
    the image exists; `delete()` evicts first. Read-only handles register no
    watch, so a cached one never blocks a delete from elsewhere (a transfer
    racing such a delete reads zeros, which its sha512 check catches).
    Used from the store's pool threads, hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: OrderedDict[str, _Handle] = OrderedDict()

    @contextmanager
    def use(self, image_id: str, open_image: Callable[[], rbd.Image]) -> Iterator[rbd.Image]:
        handle = self._acquire(image_id, open_image)
        try:
            yield handle.image
        finally:
            self._release(handle)

    def _acquire(self, image_id: str, open_image: Callable[[], rbd.Image]) -> _Handle:
        with self._lock:
            handle = self._handles.get(image_id)
            if handle is not None:
                handle.users += 1
                self._handles.move_to_end(image_id)
                return handle
        image = open_image()  # slow: outside the lock
        with self._lock:
            handle = self._handles.get(image_id)
            spare: list[_Handle] = []
            if handle is None:
                handle = self._handles[image_id] = _Handle(image)
            else:  # another thread opened it meanwhile
                spare.append(_Handle(image))
            handle.users += 1
            spare += self._expire_locked()
        _close_handles(spare)
        return handle

    def _release(self, handle: _Handle) -> None:
        with self._lock:
            handle.users -= 1
            handle.last_used = time.monotonic()
            done = [handle] if handle.evicted and handle.users == 0 else []
            done += self._expire_locked()
        _close_handles(done)

    def _expire_locked(self) -> list[_Handle]:
        """Unlist idle handles past their time or beyond the limit (oldest first)."""
        now = time.monotonic()
        expired = []
        for image_id, handle in list(self._handles.items()):
            too_many = len(self._handles) > CACHED_HANDLES
            if handle.users == 0 and (too_many or now - handle.last_used > HANDLE_IDLE_S):
                del self._handles[image_id]
                expired.append(handle)
        return expired

    def evict(self, image_id: str) -> None:
        """Forget the handle of `image_id`; closed now, or by its last user."""
        with self._lock:
            handle = self._handles.pop(image_id, None)
            if handle is None:
                return
            handle.evicted = True
            if handle.users:
                return
        handle.image.close()

    def close_all(self) -> None:
        with self._lock:
            image_ids = list(self._handles)
        for image_id in image_ids:
            self.evict(image_id)


def _close_handles(handles: list[_Handle]) -> None:
    for handle in handles:
        handle.image.close()
