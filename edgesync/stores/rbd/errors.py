"""librados/librbd errors translated into the store taxonomy, by errno.

Where rados/rbd errors enter edgesync: `Cluster.run` passes every one through
`translate`, and aio write completions (a bare negative errno) through
`store_error`.
"""

from __future__ import annotations

import errno

import rados
import rbd

from edgesync.errors import (
    StoreError,
    StoreFull,
    StoreImageExists,
    StoreImageInUse,
    StoreImageNotFound,
    StoreUnavailable,
)

ERRNO_CLASSES: dict[int, type[StoreError]] = {
    errno.EEXIST: StoreImageExists,
    errno.ENOENT: StoreImageNotFound,
    errno.EBUSY: StoreImageInUse,
    errno.ENOTEMPTY: StoreImageInUse,  # rbd.ImageHasSnapshots
    errno.ENOSPC: StoreFull,
    errno.EDQUOT: StoreFull,
    errno.ETIMEDOUT: StoreUnavailable,
    errno.ESHUTDOWN: StoreUnavailable,  # also "client blocklisted"
    errno.ENOTCONN: StoreUnavailable,
    errno.ECONNREFUSED: StoreUnavailable,
    errno.EAGAIN: StoreUnavailable,
}


def store_error(code: int | None, message: str) -> StoreError:
    """The store exception for a (positive) errno from librados/librbd."""
    if code in (errno.EPERM, errno.EACCES):
        return StoreError(f"{message}: permission denied (check the cephx user's caps)")
    cls = ERRNO_CLASSES.get(code or 0, StoreError)
    detail = errno.errorcode.get(code or 0, str(code))
    return cls(f"{message} ({detail})")


def translate(exc: BaseException, message: str) -> StoreError:
    """`exc` (a rados.Error or rbd.Error, or already a StoreError) as a StoreError."""
    if isinstance(exc, StoreError):
        return exc
    code = getattr(exc, "errno", None)
    if code is None and isinstance(exc, (rados.TimedOut, rbd.Timeout)):
        code = errno.ETIMEDOUT
    return store_error(abs(code) if isinstance(code, int) else None, message)
