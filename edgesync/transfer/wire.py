"""The transfer protocol's names, shared by its server and its client.

Two GETs per image, under `PREFIX`, authenticated by `X-Auth-Token`:

- `images/{id}/extents` → `{"image_id", "size", "extents": [[offset, length], …]}`,
  the data ranges of the published copy (holes are simply absent);
- `images/{id}/data?offset=O&length=L` → exactly those bytes (at most
  `MAX_RANGE_BYTES`), their sha256 in `CHUNK_DIGEST_HEADER`.

And two added with chunk manifests (a server without them answers 404, and
the client then does without):

- `images/{id}/manifest` → the copy's chunk manifest (`transfer.manifest`),
  which the client checks against the digest its copy command names;
- `POST images/{id}/spans` with `{"spans": [[offset, length], …]}` (at most
  `MAX_RANGE_BYTES` in all) → those bytes, one after the other, without a
  sha256: the client checks them block by block against the manifest. A
  copy asks for just the blocks its site lacks, in one request per range.

Compression is negotiated per request: a client that can decompress sends
`ACCEPT_ENCODING_HEADER: zstd`; a body sent compressed carries
`ENCODING_HEADER: zstd` (one zstd frame), any other is sent as it is (a
range that doesn't compress, an older server, an older client). Not HTTP's
own Content-Encoding: HTTP clients decode that by themselves, and the raw
bytes' length and sha256 are what the protocol checks.

Errors are JSON `{"error": {"code", "title", "message"}}`, as the hub's API.
"""

from __future__ import annotations

import asyncio
import hashlib

PREFIX = "/edgesync/v1"
CHUNK_DIGEST_HEADER = "X-Edgesync-Chunk-Sha256"
AUTH_HEADER = "X-Auth-Token"
ACCEPT_ENCODING_HEADER = "X-Edgesync-Accept-Encoding"
ENCODING_HEADER = "X-Edgesync-Encoding"
# Big enough for a few RBD objects per request, small enough that a
# refetch after a corrupt or broken range costs little.
MAX_RANGE_BYTES = 16 * 1024 * 1024
# One span per 4 KiB block of a whole range, at most.
MAX_SPANS = MAX_RANGE_BYTES // 4096
MAX_SPANS_REQUEST_BYTES = 1 << 20
# Test-only fault hook (see `http_server.data_routes`).
CORRUPT_CHUNKS_ENV = "EDGESYNC_TEST_CORRUPT_CHUNKS"

# Below this, hashing inline costs less than a hop to a thread.
_INLINE_HASH_BYTES = 64 * 1024


def extents_path(image_id: str) -> str:
    return f"{PREFIX}/images/{image_id}/extents"


def data_path(image_id: str) -> str:
    return f"{PREFIX}/images/{image_id}/data"


def manifest_path(image_id: str) -> str:
    return f"{PREFIX}/images/{image_id}/manifest"


def spans_path(image_id: str) -> str:
    return f"{PREFIX}/images/{image_id}/spans"


async def sha256_hex(data: bytes) -> str:
    """The chunk digest, off the event loop for anything sizeable
    (hashlib releases the GIL on large buffers)."""
    if len(data) < _INLINE_HASH_BYTES:
        return hashlib.sha256(data).hexdigest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
