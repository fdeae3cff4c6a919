"""The one exception family of edgesync.

Every error the project raises derives from `EdgesyncError`. Library errors
(librbd, aiomqtt, sqlite, aiohttp client) are translated into these where they
enter the code, so callers and the HTTP layer only ever see this family. Each
class carries the HTTP status the API answers with, and whether retrying the
same operation later can succeed.
"""

from __future__ import annotations


class EdgesyncError(Exception):
    """Root of every edgesync error."""

    http_status = 500
    title = "Internal Server Error"
    retryable = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


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


class UnsupportedMediaType(EdgesyncError):
    http_status = 415
    title = "Unsupported Media Type"


class RangeNotSatisfiable(EdgesyncError):
    http_status = 416
    title = "Requested Range Not Satisfiable"


class ConfigError(EdgesyncError):
    """A configuration file is wrong; the daemon must not start."""


# --- store taxonomy (store-neutral, whatever the backend) -------------------


class StoreError(EdgesyncError):
    """A store could not do what was asked."""


class StoreImageExists(StoreError, Conflict):
    """The store already holds data under that image id."""


class StoreImageNotFound(StoreError, NotFound):
    """The store holds no copy of that image."""


class StoreImageInUse(StoreError, Conflict):
    """The copy is in use (an RBD snapshot with COW clones) and can't go."""


class StoreFull(StoreError):
    http_status = 413
    title = "Request Entity Too Large"


class StoreUnavailable(StoreError):
    """The backend can't be reached now; the same call may work later."""

    http_status = 503
    title = "Service Unavailable"
    retryable = True


class SizeMismatch(StoreError, BadRequest):
    """The data written doesn't match the declared size."""


class InvalidImageData(BadRequest):
    """The image bytes are unacceptable (format, backing file, too large)."""
