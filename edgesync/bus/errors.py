"""The bus's branch of the edgesync exception family."""

from __future__ import annotations

from edgesync.errors import EdgesyncError


class BusError(EdgesyncError):
    """The message bus could not do what was asked.

    Retryable by default: most failures are a broker that can't be reached
    now. Refusals that can't change by retrying (bad credentials, a topic the
    ACL forbids, a message that doesn't parse) are raised with
    `retryable=False`.
    """

    http_status = 503
    title = "Service Unavailable"
    retryable = True


class InvalidMessage(BusError):
    """A payload that is not a message this version of edgesync understands."""

    http_status = 400
    title = "Bad Request"
    retryable = False
