"""The one exception family of edgesync, and its failure taxonomy.

Every error the project raises derives from `EdgesyncError`. Library errors
(librbd, aiomqtt, sqlite, aiohttp client) are translated into these where they
enter the code, so callers and the HTTP layer only ever see this family.

Each class carries everything the rest of the code derives from it:

- `http_status` and `title`: what the API answers with;
- `retryable`: whether the same operation may succeed later;
- `code`: the machine-readable name of the failure, on the wire between an
  agent and the hub (`FailedEvent.code`) — the class's own `code`, or its
  name in snake case;
- `reason`: the copy-failure metric's label, one of the closed set
  `FailureReason`, inherited down the hierarchy.

`failure_code` and `failure_reason` read them off any exception;
`reason_for_code` and `store_error_for_code` go back from an agent's code.
No other module keeps a table of failures.
"""

from __future__ import annotations

import re
from enum import StrEnum


class FailureReason(StrEnum):
    """Why a copy failed, as the label of `edgesync_copy_failures_total`
    (a closed set: a label is never free text)."""

    SITE_OFFLINE = "site_offline"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    TRANSFER = "transfer"
    STORE_FULL = "store_full"
    STORE_UNAVAILABLE = "store_unavailable"
    IMAGE_EXISTS = "image_exists"
    SIZE_MISMATCH = "size_mismatch"
    IN_USE = "in_use"
    STORE_ERROR = "store_error"
    INTERNAL = "internal"


# The code of anything outside the family (a bug): no class has it.
INTERNAL_CODE = "internal"

_CLASSES_BY_CODE: dict[str, type[EdgesyncError]] = {}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class EdgesyncError(Exception):
    """Root of every edgesync error."""

    http_status = 500
    title = "Internal Server Error"
    retryable = False
    code = "edgesync_error"
    # The metric's catch-all for a failure edgesync understood but has no
    # finer label for.
    reason = FailureReason.STORE_ERROR

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in cls.__dict__:
            cls.code = _snake(cls.__name__)
        _CLASSES_BY_CODE.setdefault(cls.code, cls)


class BadRequest(EdgesyncError):
    http_status = 400
    title = "Bad Request"


class Unauthorized(EdgesyncError):
    http_status = 401
    title = "Unauthorized"


class Forbidden(EdgesyncError):
    http_status = 403
    title = "Forbidden"


class NotFound(EdgesyncError):
    http_status = 404
    title = "Not Found"


class Conflict(EdgesyncError):
    http_status = 409
    title = "Conflict"


class RequestTooLarge(EdgesyncError):
    http_status = 413
    title = "Request Entity Too Large"


class RequestTimeout(EdgesyncError):
    """A client stopped sending the body it started (see edgesync.http_limits)."""

    http_status = 408
    title = "Request Timeout"


class QuotaExceeded(RequestTooLarge):
    """A project over its quota (Glance answers LimitExceeded with 413)."""


class UnsupportedMediaType(EdgesyncError):
    http_status = 415
    title = "Unsupported Media Type"


class RangeNotSatisfiable(EdgesyncError):
    http_status = 416
    title = "Requested Range Not Satisfiable"


class IdentityUnavailable(EdgesyncError):
    """Keystone can't be asked now (down, slow, or refusing the hub's own
    credentials): a 503, never a 401 that makes a client drop a good token."""

    http_status = 503
    title = "Service Unavailable"
    retryable = True


class ConfigError(EdgesyncError):
    """A configuration file is wrong; the daemon must not start."""


# --- store taxonomy (store-neutral, whatever the backend) -------------------


class StoreError(EdgesyncError):
    """A store could not do what was asked."""


class StoreImageExists(StoreError, Conflict):
    """The store already holds data under that image id."""

    code = "image_exists"
    reason = FailureReason.IMAGE_EXISTS


class StoreImageNotFound(StoreError, NotFound):
    """The store holds no copy of that image."""


class StoreImageInUse(StoreError, Conflict):
    """The copy is in use (an RBD snapshot with COW clones) and can't go."""

    code = "in_use"
    reason = FailureReason.IN_USE


class StoreFull(StoreError):
    http_status = 413
    title = "Request Entity Too Large"
    reason = FailureReason.STORE_FULL


class StoreUnavailable(StoreError):
    """The backend can't be reached now; the same call may work later."""

    http_status = 503
    title = "Service Unavailable"
    retryable = True
    reason = FailureReason.STORE_UNAVAILABLE


class SizeMismatch(StoreError, BadRequest):
    """The data written doesn't match the declared size."""

    reason = FailureReason.SIZE_MISMATCH


# An agent's store failure is raised at the hub as the same class (an image
# in use is a 409 there too, an unreachable Ceph a 503): the store taxonomy
# above, and nothing defined elsewhere.
_STORE_CLASSES_BY_CODE: dict[str, type[StoreError]] = {
    cls.code: cls for cls in (StoreError, StoreImageExists, StoreImageNotFound, StoreImageInUse, StoreFull,
                              StoreUnavailable, SizeMismatch)
}


# --- verification and transfer --------------------------------------------------


class ChecksumMismatch(EdgesyncError):
    """A copy's bytes don't hash to the image's `os_hash_value`; it was not published.

    Not retryable: the same source gives the same bytes.
    """

    http_status = 502
    title = "Bad Gateway"
    reason = FailureReason.CHECKSUM_MISMATCH


class TransferError(EdgesyncError):
    """Pulling image bytes from another site failed. `status` is the peer's
    HTTP status when it answered, None when the network failed."""

    http_status = 502
    title = "Bad Gateway"
    retryable = True
    reason = FailureReason.TRANSFER

    def __init__(self, message: str, *, status: int | None = None, retryable: bool | None = None) -> None:
        super().__init__(message, retryable=retryable)
        self.status = status


class ChunkDigestMismatch(TransferError):
    """A range's bytes don't match what they should: the sha256 its server
    sent with them, the blocks of the image's chunk manifest, or (a zstd
    frame) the length they were asked for."""


class InvalidManifest(TransferError):
    """A chunk manifest that doesn't parse, or isn't the one its copy names."""

    retryable = False


class InvalidImageData(BadRequest):
    """The image bytes are unacceptable (format, backing file, too large)."""


# --- deriving ------------------------------------------------------------------------


def failure_code(exc: BaseException) -> str:
    """The machine-readable code of `exc` (`internal` for anything outside the family)."""
    return exc.code if isinstance(exc, EdgesyncError) else INTERNAL_CODE


def failure_reason(exc: BaseException) -> FailureReason:
    """Why a copy failed, as the metric's label."""
    return exc.reason if isinstance(exc, EdgesyncError) else FailureReason.INTERNAL


def reason_for_code(code: str | None) -> FailureReason:
    """The metric's label for a failure known only by its code (an agent's):
    that of the class with the code; a code this version doesn't know is a
    store error."""
    if code == INTERNAL_CODE:
        return FailureReason.INTERNAL
    cls = _CLASSES_BY_CODE.get(code or "")
    return cls.reason if cls is not None else FailureReason.STORE_ERROR


def store_error_for_code(code: str | None, message: str, *, retryable: bool) -> StoreError | None:
    """An agent's failure as the store-taxonomy error its code names, or None
    if the code names none (the caller then keeps the code as it came)."""
    cls = _STORE_CLASSES_BY_CODE.get(code or "")
    return cls(message, retryable=retryable) if cls is not None else None
