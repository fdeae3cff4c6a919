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
    # Popped: processes this daemon starts (qemu-img, …) must not take them as theirs.
    value = os.environ.pop(LISTEN_FD_ENV, None)
    if value is None:
        return []
    socks = []
    try:
        for fd in value.split(","):
            socks.append(socket.socket(fileno=int(fd)))
    except (ValueError, OSError) as exc:
        for sock in socks:
            sock.close()
        raise ConfigError(f"{LISTEN_FD_ENV}={value!r} is not a list of socket descriptors ({exc})") from None
    bound = [sock.getsockname()[:2] for sock in socks]
    if (host, port) not in bound or any(sock.type != socket.SOCK_STREAM for sock in socks):
        for sock in socks:
            sock.close()
        where = ", ".join(f"{h}:{p}" for h, p in bound)
        raise ConfigError(f"the sockets in {LISTEN_FD_ENV} are bound to {where}, "
                          f"but the config says to listen on {host}:{port}")
    for sock in socks:
        sock.set_inheritable(False)
    return socks
