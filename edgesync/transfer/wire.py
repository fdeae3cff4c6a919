"""The transfer protocol's names, shared by its server and its client.

Two GETs per image, under `PREFIX`, authenticated by `X-Auth-Token`:

- `images/{id}/extents` → `{"image_id", "size", "extents": [[offset, length], …]}`,
  the data ranges of the published copy (holes are simply absent);
- `images/{id}/data?offset=O&length=L` → exactly those bytes (at most
  `MAX_RANGE_BYTES`), their sha256 in `CHUNK_DIGEST_HEADER`.

Errors are JSON `{"error": {"code", "title", "message"}}`, as the hub's API.
"""

from __future__ import annotations

import asyncio
import hashlib

PREFIX = "/edgesync/v1"
CHUNK_DIGEST_HEADER = "X-Edgesync-Chunk-Sha256"
AUTH_HEADER = "X-Auth-Token"
# Big enough for a few RBD objects per request, small enough that a
# refetch after a corrupt or broken range costs little.
MAX_RANGE_BYTES = 16 * 1024 * 1024
# Test-only fault hook (see `http_server.data_routes`).
CORRUPT_CHUNKS_ENV = "EDGESYNC_TEST_CORRUPT_CHUNKS"

# Below this, hashing inline costs less than a hop to a thread.
_INLINE_HASH_BYTES = 64 * 1024


def extents_path(image_id: str) -> str:
    return f"{PREFIX}/images/{image_id}/extents"


def data_path(image_id: str) -> str:
    return f"{PREFIX}/images/{image_id}/data"


async def sha256_hex(data: bytes) -> str:
    """The chunk digest, off the event loop for anything sizeable
    (hashlib releases the GIL on large buffers)."""
    if len(data) < _INLINE_HASH_BYTES:
        return hashlib.sha256(data).hexdigest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
