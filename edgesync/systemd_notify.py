"""systemd's notify protocol (sd_notify(3)), spoken over a plain socket.

A service with `Type=notify` gets `$NOTIFY_SOCKET`, a unix datagram socket
(a path, or an abstract name written with a leading `@`); the daemon sends it
newline-separated `KEY=VALUE` lines: READY=1, STOPPING=1, WATCHDOG=1,
STATUS=text. With `WatchdogSec=` systemd also sets `$WATCHDOG_USEC` (and
`$WATCHDOG_PID`, the pid meant to ping).

No dependency: the protocol is one `sendto` per message, and the usual
bindings (python-systemd, sdnotify) either need libsystemd's headers to build
or add nothing over these few lines. Without `$NOTIFY_SOCKET` (not run by
systemd: the lab, a terminal) every call does nothing.

Sends never block and never fail the daemon: the socket is non-blocking, and
a message systemd can't take is dropped with a debug line (a lost watchdog
ping is followed by the next one).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def socket_address(value: str) -> str | bytes:
    """`$NOTIFY_SOCKET` as an address for `sendto`: `@name` is the abstract
    socket `\\0name` (as sd_notify reads it)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval_s(env: Mapping[str, str], pid: int) -> float | None:
    """How often to ping: half of `$WATCHDOG_USEC` (sd_watchdog_enabled(3)
    advises pinging at half the timeout), or None when no watchdog is asked
    of this process (unset, unparseable, 0, or `$WATCHDOG_PID` names another pid)."""
    usec = env.get(WATCHDOG_USEC, "")
    wanted_pid = env.get(WATCHDOG_PID, "")
    if wanted_pid and wanted_pid != str(pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2 / 1_000_000 if value > 0 else None


class Notifier:
    """Sends notify messages to one socket (or nowhere)."""

    def __init__(self, address: str | bytes | None, *, watchdog_interval_s: float | None = None) -> None:
        self.address = address
        self.watchdog_interval_s = watchdog_interval_s
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environment(cls, env: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for, taking its variables out of the
        environment (sd_notify's unset_environment): qemu-img and other children
        must not inherit them, or ping, or answer for us."""
        env = os.environ if env is None else env
        value = env.pop(NOTIFY_SOCKET, "")
        interval = watchdog_interval_s(env, os.getpid())
        env.pop(WATCHDOG_USEC, None)
        env.pop(WATCHDOG_PID, None)
        if not value:
            return cls(None)
        return cls(socket_address(value), watchdog_interval_s=interval)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str) -> bool:
        """Send one message, `READY="1", STATUS="…"` → "READY=1\\nSTATUS=…".
        True if it went out (or there is nowhere to send it)."""
        if self._sock is None or self.address is None:
            return True
        # STATUS is free text, but the protocol is line-based.
        text = "\n".join(f"{key}={' '.join(str(value).splitlines())}" for key, value in fields.items())
        try:
            self._sock.sendto(text.encode(), self.address)
        except OSError as exc:  # systemd gone, queue full, socket removed
            log.debug("sd_notify %r not sent: %s", text, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status)

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING="1", STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG="1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
