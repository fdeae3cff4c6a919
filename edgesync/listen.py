"""Where a daemon's HTTP server listens: its configured HOST:PORT, or a socket
handed over by whoever started it.

The lab binds each daemon's port itself, before it writes the configs that
name the port, and passes the listening socket down by its descriptor number
in `EDGESYNC_LISTEN_FD`: a port picked by binding and closing could be taken
before the daemon binds it. The socket must be bound to the configured
address, so the config stays the truth about where the daemon serves.
"""

from __future__ import annotations

import os
import socket

from aiohttp import web

from edgesync.errors import ConfigError

LISTEN_FD_ENV = "EDGESYNC_LISTEN_FD"


async def start_site(runner: web.AppRunner, host: str, port: int) -> web.BaseSite:
    """Serve `runner` on the handed-over socket if there is one, else on host:port."""
    sock = _handed_over(host, port)
    site: web.BaseSite = web.SockSite(runner, sock) if sock else web.TCPSite(runner, host, port)
    await site.start()
    return site


def _handed_over(host: str, port: int) -> socket.socket | None:
    # Popped: processes this daemon starts (qemu-img, …) must not take it as theirs.
    value = os.environ.pop(LISTEN_FD_ENV, None)
    if value is None:
        return None
    try:
        sock = socket.socket(fileno=int(value))
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{LISTEN_FD_ENV}={value!r} is not a socket descriptor ({exc})") from None
    bound = sock.getsockname()
    if sock.type != socket.SOCK_STREAM or (bound[0], bound[1]) != (host, port):
        sock.close()
        raise ConfigError(f"the socket in {LISTEN_FD_ENV} is bound to {bound[0]}:{bound[1]}, "
                          f"but the config says to listen on {host}:{port}")
    sock.set_inheritable(False)
    return sock
