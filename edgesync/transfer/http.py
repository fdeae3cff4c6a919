"""Image bytes between sites over HTTP: the one import point of the protocol.

- `data_routes(lookup, authorize)`: the serving side (hub and agents mount it);
- `HttpSource`: the pulling side, a `DataSource` for `pipeline.pump`;
- `RateLimiter`: a site's bandwidth limit, shared by all its transfers;
- `TransferError` / `ChunkDigestMismatch`: what a pull raises.

The protocol itself is described in `edgesync.transfer.wire`.
"""

from edgesync.errors import ChunkDigestMismatch, TransferError
from edgesync.transfer.counters import ServedCounters
from edgesync.transfer.http_client import ExtentMap, HttpSource
from edgesync.transfer.http_server import ServedCopy, data_routes, error_response
from edgesync.transfer.ratelimit import RateLimiter
from edgesync.transfer.wire import AUTH_HEADER, CHUNK_DIGEST_HEADER, CORRUPT_CHUNKS_ENV, MAX_RANGE_BYTES, PREFIX

__all__ = [
    "AUTH_HEADER", "CHUNK_DIGEST_HEADER", "CORRUPT_CHUNKS_ENV", "MAX_RANGE_BYTES", "PREFIX",
    "ChunkDigestMismatch", "ExtentMap", "HttpSource", "RateLimiter", "ServedCopy", "ServedCounters", "TransferError",
    "data_routes", "error_response",
]
