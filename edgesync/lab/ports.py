"""Ports for the lab's daemons, chosen so that they can't race.

A port found free by binding and closing can be taken by anyone before the
daemon binds it (one agent of a 100-site lab died with EADDRINUSE that way).
So the lab binds and listens on its hub's and agents' ports itself and hands
the socket to the daemon (`edgesync.listen`); for daemons that can't take a
socket (Ceph mons, Mosquitto) the caller retries with another port when the
daemon says the address is in use.

Ports come from below the kernel's ephemeral range (32768+), so an outgoing
connection is never given one of them while its daemon is down for a restart.
"""

from __future__ import annotations

import ctypes
import os
import random
import socket
import threading
from collections.abc import Callable
from contextlib import ExitStack
from typing import TypeVar

from edgesync.lab.errors import LabError

PORT_RANGE = (20000, 32000)
PICK_ATTEMPTS = 200
BACKLOG = 512  # a hundred agents connect at once while the hub starts
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def listening_socket(host: str, port: int | None = None, *, netns: str | None = None) -> socket.socket:
    """A socket bound and listening on `host:port`, or on a free port of
    PORT_RANGE when `port` is None, ready to be handed to a daemon; with
    `netns`, a socket of that network namespace (the WAN lab's sites)."""
    if netns is not None:
        return in_netns(netns, lambda: listening_socket(host, port))
    if port is not None:
        try:
            return _listen(host, port)
        except OSError as exc:
            raise LabError(f"port {host}:{port} is taken ({exc.strerror}); "
                           "`lab down` and `lab up` again to move to other ports") from None
    for _ in range(PICK_ATTEMPTS):
        try:
            return _listen(host, random.randrange(*PORT_RANGE))
        except OSError:
            continue
    raise LabError(f"no free port on {host} in {PORT_RANGE[0]}-{PORT_RANGE[1]}")


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # As the daemon itself would: connections of a stopped one in TIME_WAIT
        # don't keep its successor off the port. Listening at once, because
        # Linux lets two SO_REUSEADDR sockets share a port until one listens.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def pick_free(host: str, count: int) -> list[int]:
    """`count` distinct ports free now, held bound until all are chosen; for a
    daemon that binds them itself (so its start must retry if one is taken)."""
    ports: list[int] = []
    with ExitStack() as held:
        for _ in range(PICK_ATTEMPTS + count):
            if len(ports) == count:
                break
            port = random.randrange(*PORT_RANGE)
            if port in ports:
                continue
            try:
                held.enter_context(_listen(host, port))
            except OSError:
                continue
            ports.append(port)
    if len(ports) < count:
        raise LabError(f"no {count} free ports on {host} in {PORT_RANGE[0]}-{PORT_RANGE[1]}")
    return ports


def is_free(host: str, port: int) -> bool:
    """Whether a daemon could bind `host:port` now (TIME_WAIT leftovers don't count)."""
    try:
        _listen(host, port).close()
    except OSError:
        return False
    return True


def in_netns(netns: str, make: Callable[[], T]) -> T:
    """`make()` run in network namespace `netns`, for the sockets it creates.

    On a thread of its own that enters the namespace and then ends: setns(2)
    moves only the calling thread, and a socket stays in the namespace it was
    made in whoever holds it later (the daemon it is handed to).
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc().setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(make())
        except BaseException as exc:  # noqa: BLE001 — raised again in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if failure:
        if isinstance(failure[0], OSError):
            raise LabError(f"cannot work in network namespace {netns}: {failure[0]}") from failure[0]
        raise failure[0]
    return result[0]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
