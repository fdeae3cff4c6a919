"""Where a daemon's HTTP server listens: its configured HOST:PORT, or a socket
handed over by whoever started it.

The lab binds each daemon's port itself, before it writes the configs that
name the port, and passes the listening socket down by its descriptor number
in `EDGESYNC_LISTEN_FD`: a port picked by binding and closing could be taken
before the daemon binds it. One of the sockets must be bound to the configured
address, so the config stays the truth about where the daemon serves; any
others are more ways in (the WAN lab's hub, in central's network namespace,
also gets a socket of the machine's own namespace, where operators' clients
run).

A process running several daemons (the lab's agents sharing processes) is
handed one group of sockets per daemon, groups separated by ';'
(`EDGESYNC_LISTEN_FD=5;6;7`): each daemon takes the group holding a socket
bound where its own config says.
"""

from __future__ import annotations

import os
import socket
import ssl

from aiohttp import web

from edgesync.errors import ConfigError

LISTEN_FD_ENV = "EDGESYNC_LISTEN_FD"


async def start_site(runner: web.AppRunner, host: str, port: int,
                     ssl_context: ssl.SSLContext | None = None) -> list[web.BaseSite]:
    """Serve `runner` on the handed-over sockets if there are any, else on
    host:port; over TLS with `ssl_context`."""
    socks = _handed_over(host, port)
    sites: list[web.BaseSite] = ([web.SockSite(runner, sock, ssl_context=ssl_context) for sock in socks]
                                 or [web.TCPSite(runner, host, port, ssl_context=ssl_context)])
    for site in sites:
        await site.start()
    return sites


def _handed_over(host: str, port: int) -> list[socket.socket]:
    groups = _groups()
    if not groups:
        return []
    for i, socks in enumerate(groups):
        if (host, port) in (sock.getsockname()[:2] for sock in socks):
            del groups[i]
            return socks
    where = "; ".join(", ".join(f"{h}:{p}" for h, p in (s.getsockname()[:2] for s in socks)) for socks in groups)
    _close_all()
    raise ConfigError(f"the sockets in {LISTEN_FD_ENV} are bound to {where}, "
                      f"but the config says to listen on {host}:{port}")


_handed: list[list[socket.socket]] | None = None  # the groups not taken yet, once read


def _groups() -> list[list[socket.socket]]:
    """The handed-over sockets by daemon, read from the environment once."""
    global _handed
    # Popped: processes this daemon starts (qemu-img, …) must not take them as theirs.
    value = os.environ.pop(LISTEN_FD_ENV, None)
    if value is not None:
        _handed = _parse(value)
    return _handed or []


def _close_all() -> None:
    global _handed
    for sock in (s for g in _handed or [] for s in g):
        sock.close()
    _handed = None


def _parse(value: str) -> list[list[socket.socket]]:
    groups: list[list[socket.socket]] = []
    try:
        for group in value.split(";"):
            groups.append([])
            for fd in group.split(","):
                groups[-1].append(socket.socket(fileno=int(fd)))
    except (ValueError, OSError) as exc:
        for sock in (s for g in groups for s in g):
            sock.close()
        raise ConfigError(f"{LISTEN_FD_ENV}={value!r} is not a list of socket descriptors ({exc})") from None
    if any(sock.type != socket.SOCK_STREAM for g in groups for sock in g):
        for sock in (s for g in groups for s in g):
            sock.close()
        raise ConfigError(f"{LISTEN_FD_ENV}={value!r} names a socket that is not a TCP stream")
    for sock in (s for g in groups for s in g):
        sock.set_inheritable(False)
    return groups
