"""web-download: fetch an image from a user-given URI into a sparse staging file.

The URI is untrusted. It is checked against the operator's filter before the
first request and again at every redirect (redirects are followed by hand:
otherwise an allowed server could bounce the hub to an internal address).
The check is by address: each hop's host is resolved once, every address
checked, and the connection goes to exactly those addresses (a resolver that
knows only them), so no second lookup or other spelling reaches elsewhere.
The body is streamed to disk in batches, all-zero blocks left as holes,
never held in memory whole; more than `max_bytes` stops the download.

Whatever goes wrong, including cancellation, the destination file is removed.
"""

from __future__ import annotations

import contextlib
import socket
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from edgesync.config import UriFilter
from edgesync.errors import BadRequest, RequestTooLarge
from edgesync.importer.hashing import ImageDigest
from edgesync.importer.sparsefile import BATCH_BYTES, SparseFile, copy_stream
from edgesync.importer.uri_filter import canonical_host, check_uri, resolve_checked
from edgesync.stores.sparse import DEFAULT_GRANULARITY

MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# What aiohttp can fetch; the filter may allow more (Glance's docs allow ftp).
FETCHABLE_SCHEMES = frozenset({"http", "https"})
# Bytes gathered before one write to disk: big enough to amortise the thread
# hop, a multiple of the zero-detection granularity so holes line up.
assert BATCH_BYTES % DEFAULT_GRANULARITY == 0


async def download(
    uri: str,
    dest: Path,
    *,
    rules: UriFilter,
    max_bytes: int,
    timeout_s: float,
    digest: ImageDigest | None = None,
) -> int:
    """Download `uri` into the sparse file `dest`; return its size in bytes.

    `timeout_s` bounds each wait on the server (connecting, and any silence
    between bytes), not the whole transfer: a slow but steady download of a
    big image completes, a stalled one fails.
    If `digest` is given, it is fed the downloaded bytes in order.

    Raises BadRequest (URI refused by `rules`, at the start or at a redirect;
    an HTTP error status; too many redirects; a network failure or timeout),
    RequestTooLarge (more than `max_bytes`), EdgesyncError (dest can't be
    written). `dest` never survives a failure.
    """
    check_uri(uri, rules)
    dest = Path(dest)
    timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
    resolver = PinnedResolver()
    await resolver.pin(uri, rules)
    async with _pinned_session(resolver) as http:
        sink = await SparseFile.create(dest)
        try:
            async with _final_response(http, resolver, uri, rules, timeout) as (response, final_uri):
                _refuse_declared_oversize(response, final_uri, max_bytes)
                size = await _stream(response, final_uri, sink, max_bytes, digest)
            await sink.finish(size)
            return size
        except BaseException:
            await sink.discard()
            raise


# --- HTTP ----------------------------------------------------------------------


class PinnedResolver(AbstractResolver):
    """Resolves only hosts whose addresses were checked, to exactly those.

    A proxy's host (HTTP(S)_PROXY) is the one exception, resolved normally:
    through a proxy, the proxy connects, and the filter still applied to the
    image URI's own host.
    """

    def __init__(self) -> None:
        self._pinned: dict[str, list[str]] = {}
        self._fallback = aiohttp.ThreadedResolver()

    async def pin(self, uri: str, rules: UriFilter) -> None:
        """Check `uri` by address (BadRequest if refused) and remember them."""
        host, addresses = await resolve_checked(uri, rules)
        self._pinned[host] = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self._pinned.get(canonical_host(host))
        if addresses is None:
            if host.lower() in _proxy_hosts():
                return await self._fallback.resolve(host, port, family)
            raise OSError(f"{host} was not checked against the URI filter")
        wanted = [a for a in addresses if family in (socket.AF_UNSPEC, _family(a))]
        if not wanted:
            raise OSError(f"{host} has no checked address of the family asked for")
        return [ResolveResult(hostname=host, host=a, port=port, family=_family(a), proto=0,
                              flags=socket.AI_NUMERICHOST) for a in wanted]

    async def close(self) -> None:
        await self._fallback.close()


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _proxy_hosts() -> set[str]:
    hosts = set()
    for proxy in urllib.request.getproxies().values():
        with contextlib.suppress(ValueError):
            hosts.add((urlsplit(proxy).hostname or "").lower())
    return hosts


def _pinned_session(resolver: PinnedResolver) -> aiohttp.ClientSession:
    # trust_env: honour HTTP(S)_PROXY / NO_PROXY, as Glance's urllib does; the
    # filter still applies to the image URI itself.
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    return aiohttp.ClientSession(connector=connector, trust_env=True)


@contextlib.asynccontextmanager
async def _final_response(
    http: aiohttp.ClientSession, resolver: PinnedResolver, uri: str, rules: UriFilter, timeout: aiohttp.ClientTimeout
) -> AsyncIterator[tuple[aiohttp.ClientResponse, str]]:
    """The first non-redirect response for `uri`, every hop checked against `rules`."""
    seen = [uri]
    current = uri
    while True:
        async with _get(http, current, timeout) as response:
            if response.status not in _REDIRECT_STATUSES:
                _refuse_error_status(response, current)
                yield response, current
                return
            target = _redirect_target(response, current)
        if target in seen:
            raise BadRequest(f"could not download {_redact(uri)}: redirect loop at {_redact(target)}")
        if len(seen) > MAX_REDIRECTS:
            raise BadRequest(f"could not download {_redact(uri)}: more than {MAX_REDIRECTS} redirects")
        try:
            await resolver.pin(target, rules)
        except BadRequest as exc:
            raise BadRequest(f"{exc.message} (redirected to by {_redact(current)})") from exc
        seen.append(target)
        current = target


@contextlib.asynccontextmanager
async def _get(
    http: aiohttp.ClientSession, uri: str, timeout: aiohttp.ClientTimeout
) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET without following redirects; network failures become BadRequest."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme not in FETCHABLE_SCHEMES:
        raise BadRequest(
            f"could not download {_redact(uri)}: the URI filter allows scheme '{scheme}' "
            f"but this hub can only download over {' and '.join(sorted(FETCHABLE_SCHEMES))}"
        )
    try:
        response = await http.get(
            uri,
            allow_redirects=False,
            timeout=timeout,
            # The image as stored, not a transfer-compressed variant.
            headers={"Accept-Encoding": "identity"},
        )
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        # ValueError: a URI aiohttp/yarl can't use, despite passing the filter.
        raise _network_error(uri, exc) from exc
    try:
        yield response
    except BaseException:
        response.close()  # a body left half-read: drop the connection
        raise
    else:
        response.release()


def _network_error(uri: str, exc: BaseException) -> BadRequest:
    reason = "the server did not answer in time" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
    return BadRequest(f"could not download {_redact(uri)}: {reason}")


def _refuse_error_status(response: aiohttp.ClientResponse, uri: str) -> None:
    if not 200 <= response.status < 300:
        raise BadRequest(
            f"could not download {_redact(uri)}: the server answered "
            f"{response.status} {response.reason or ''}".rstrip()
        )


def _redirect_target(response: aiohttp.ClientResponse, uri: str) -> str:
    location = response.headers.get("Location")
    if not location:
        raise BadRequest(
            f"could not download {_redact(uri)}: the server answered "
            f"{response.status} without a Location to go to"
        )
    return urljoin(uri, location)  # a relative Location is relative to this hop


def _refuse_declared_oversize(response: aiohttp.ClientResponse, uri: str, max_bytes: int) -> None:
    # Fail before writing anything when the server says up front it is too big.
    length = response.content_length
    if length is not None and length > max_bytes:
        raise _too_large(uri, max_bytes, f"{length} bytes, ")


def _too_large(uri: str, max_bytes: int, size: str = "") -> RequestTooLarge:
    return RequestTooLarge(
        f"could not download {_redact(uri)}: the image is {size}over this hub's "
        f"maximum image size of {max_bytes} bytes"
    )


REDACTED = "***"


def redact_uri(uri: str) -> str:
    """The URI without any user:password, fit for messages, logs and records."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<malformed URI>"
    if "@" not in parts.netloc:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))


_redact = redact_uri


# --- streaming to disk ---------------------------------------------------------


async def _stream(
    response: aiohttp.ClientResponse,
    uri: str,
    sink: SparseFile,
    max_bytes: int,
    digest: ImageDigest | None,
) -> int:
    """Copy the body into `sink`; return the byte count."""
    try:
        return await copy_stream(response.content.iter_chunked(1 << 20), sink, max_bytes=max_bytes,
                                 too_large=lambda: _too_large(uri, max_bytes), digest=digest)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _network_error(uri, exc) from exc


