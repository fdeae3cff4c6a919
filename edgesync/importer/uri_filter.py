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

Hosts are compared by what they reach, not by spelling. A host is first put
in its one canonical form: IDNA (so full-width digits and ideographic dots
become ASCII) and, for an address in any spelling the resolver accepts
(`0x7f.1`, `2130706433`, `[::ffff:127.0.0.1]`), the address itself. A host
entry may be a name, an address or a network (`127.0.0.0/8`). `check_uri`
decides on the spelling alone (at request time); `resolve_checked` then
resolves the name once and checks every address it gives: a blocklisted
address or network refuses a name that resolves into it (`localhost`, names
from /etc/hosts). The unspecified address (`0.0.0.0`, `::`) reaches this
host itself, so it is checked as loopback too. An allowlisted *name* trusts
whatever that name resolves to; an allowlisted address or network admits
only literal addresses inside it. The caller connects to exactly the
addresses returned, so a second lookup can't give a different answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
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
    _check_host(host, rules)

    if port is not None:
        _check_level("port", port, rules.allowed_ports, rules.disallowed_ports)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


async def resolve_checked(uri: str, rules: UriFilter) -> tuple[str, list[str]]:
    """Check `uri`, resolve its host once and check every address it gives.

    Returns (canonical host, the addresses to connect to), every one of them
    allowed by `rules`; BadRequest if any is refused or the name doesn't resolve.
    """
    check_uri(uri, rules)
    _, host, port = _split(uri)
    literal = _as_address(host)
    if literal is not None:
        return host, [str(literal)]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port or 0, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise BadRequest(f"{_PREFIX}: host {_show(host)} does not resolve ({exc})") from exc
    addresses = sorted({str(info[4][0]) for info in infos})
    if not addresses:
        raise BadRequest(f"{_PREFIX}: host {_show(host)} does not resolve")
    if not rules.allowed_hosts:  # an allowlisted name trusts what it resolves to
        for address in addresses:
            _refuse_blocked_address(host, ipaddress.ip_address(address), rules)
    return host, addresses


def canonical_host(host: str) -> str:
    """The one spelling of `host` the filter compares: IDNA, lower case, an
    address in its standard form (IPv4-mapped IPv6 as IPv4)."""
    host = host.strip().rstrip(".").lower()
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError as exc:
            raise BadRequest(f"{_PREFIX}: host {host!r} is not a valid host name ({exc})") from exc
    address = _as_address(host)
    return str(address) if address is not None else host


def _as_address(host: str) -> Address | None:
    """`host` as an address if it spells one (any form inet_aton accepts)."""
    address: Address | None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = _inet_aton(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    # 0x7f.1, 017700000001, 2130706433: what the C resolver reads as IPv4.
    if not host or set(host) - set("0123456789abcdefx."):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _check_host(host: str, rules: UriFilter) -> None:
    allowed, disallowed = _lower(rules.allowed_hosts), _lower(rules.disallowed_hosts)
    address = _as_address(host)
    if allowed:
        if host in allowed or (address is not None and _in_networks(address, allowed)):
            return
        _check_level("host", host, allowed, ())
    _check_level("host", host, (), disallowed)
    if address is not None:
        _refuse_blocked_address(host, address, rules)


def _refuse_blocked_address(host: str, address: Address, rules: UriFilter) -> None:
    disallowed = _lower(rules.disallowed_hosts)
    if _in_networks(address, disallowed):
        shown = _show(host) if host == str(address) else f"{_show(host)} (address {address})"
        raise BadRequest(
            f"{_PREFIX}: host {shown} is in the disallowed hosts ({_join(disallowed)}); "
            "any other host is allowed")


def _in_networks(address: Address, entries: Collection[str]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    candidates = [address]
    if address.is_unspecified:  # 0.0.0.0 and :: connect to this host itself
        candidates.append(ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1"))
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            continue  # a name entry
        if any(c.version == network.version and c in network for c in candidates):
            return True
    return False


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
    return parts.scheme.lower(), canonical_host(host), port


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
