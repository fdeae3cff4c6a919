"""The web-download source filter: which URIs the hub may fetch images from.

The decision logic is Glance's (glance-image-import.conf, `import_filtering_opts`)
and is applied level by level, stopping at the first rejection:

1. scheme: missing -> reject. If an allowlist exists, anything not in it is
   rejected and the blocklist is ignored; otherwise anything in the blocklist
   is rejected.
2. host: the same, for the host name.
3. port: checked only when the URI names a port explicitly, with the same
   allow/block logic. A URI without a port is accepted at this level whatever
   the port lists say (the scheme's default port is not checked).
4. accept.

An empty list means "no list". Schemes and hosts compare case-insensitively
(URIs do); a malformed URI (unparsable port, say) is rejected outright.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from edgesync.config import UriFilter
from edgesync.errors import BadRequest

_PREFIX = "web-download URI rejected"


def check_uri(uri: str, rules: UriFilter) -> None:
    """Raise `BadRequest` unless `rules` allow fetching `uri`."""
    scheme, host, port = _split(uri)

    if not scheme:
        raise BadRequest(f"{_PREFIX}: {uri!r} has no scheme; use an absolute URI such as http://host/path")
    _check_level("scheme", scheme, _lower(rules.allowed_schemes), _lower(rules.disallowed_schemes))

    if not host:
        raise BadRequest(f"{_PREFIX}: {uri!r} has no host name")
    _check_level("host", host, _lower(rules.allowed_hosts), _lower(rules.disallowed_hosts))

    if port is not None:
        _check_level("port", port, rules.allowed_ports, rules.disallowed_ports)


def _split(uri: str) -> tuple[str, str, int | None]:
    """(lower-case scheme, lower-case host, explicit port or None); BadRequest if malformed."""
    if not isinstance(uri, str) or not uri.strip():
        raise BadRequest(f"{_PREFIX}: the URI is empty")
    try:
        parts = urlsplit(uri.strip())
        # .port raises ValueError for a non-numeric or out-of-range port.
        port = parts.port
        host = parts.hostname or ""
    except ValueError as exc:
        raise BadRequest(f"{_PREFIX}: {uri!r} is not a valid URI ({exc})") from exc
    if port is None and _has_empty_port(parts.netloc):
        # "http://host:/x": a colon with no digits. urlsplit reads it as "no
        # port"; refuse it rather than guess what the user meant.
        raise BadRequest(f"{_PREFIX}: {uri!r} has an empty port")
    return parts.scheme.lower(), host.lower(), port


def _has_empty_port(netloc: str) -> bool:
    hostport = netloc.rpartition("@")[2]
    return hostport.endswith(":")


def _check_level(
        level: str, value: str | int, allowed: Collection[str | int], disallowed: Collection[str | int]) -> None:
    # An allowlist, when present, wins: the blocklist is then not consulted.
    if allowed:
        if value not in allowed:
            raise BadRequest(
                f"{_PREFIX}: {level} {_show(value)} is not in the allowed {level}s "
                f"({_join(allowed)})"
            )
        return
    if value in disallowed:
        raise BadRequest(
            f"{_PREFIX}: {level} {_show(value)} is in the disallowed {level}s "
            f"({_join(disallowed)}); any other {level} is allowed"
        )


def _lower(items: Collection[str]) -> tuple[str, ...]:
    return tuple(i.lower() for i in items)


def _show(value: str | int) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


def _join(items: Collection[object]) -> str:
    return ", ".join(str(i) for i in items)
