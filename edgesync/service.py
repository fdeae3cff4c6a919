"""A daemon's life as a service: stop signals, systemd notifications, watchdog.

    async with Service("hub") as service:
        await hub.start()
        service.ready("serving on …")      # READY=1: only once it really serves
        await service.stop_requested()      # SIGTERM or SIGINT (STOPPING=1 is sent then)
        await hub.close()

Without systemd (no `$NOTIFY_SOCKET`) only the signal handling remains.

The watchdog pings (WATCHDOG=1 at half of `$WATCHDOG_USEC`) come from a task
on the daemon's own event loop, not from a thread: a loop blocked by a
synchronous call stops the pings, and systemd restarts the daemon. They go
on while the daemon stops, so a slow but live shutdown is not killed as hung.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import TracebackType

from edgesync.systemd_notify import Notifier

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STATUS_REFRESH_S = 5.0  # how often `describe` is asked for STATUS= when there is no watchdog


class Service:
    def __init__(self, name: str, *, notifier: Notifier | None = None,
                 describe: Callable[[], str] | None = None) -> None:
        """`describe` gives the current STATUS= line while the daemon runs
        (e.g. "broker connected, 2 tasks in flight"); it is sent when it changes."""
        self.name = name
        self.notifier = notifier if notifier is not None else Notifier.from_environment()
        self._describe = describe
        self._stop = asyncio.Event()
        self._on_stop: list[Callable[[], None]] = []
        self._ticker: asyncio.Task[None] | None = None
        self._ready = False
        self._last_status = ""

    async def __aenter__(self) -> Service:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._signalled, sig)
        self._status(f"{self.name}: starting")
        if self.notifier.enabled:
            self._ticker = asyncio.create_task(self._tick(), name="service-ticker")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            self._status(f"{self.name}: failed: {getattr(exc, 'message', None) or exc}")
        self.notifier.close()

    # --- what the daemon calls --------------------------------------------------------

    def ready(self, status: str) -> None:
        """The daemon serves: systemd starts the units ordered after it."""
        if self._stop.is_set():
            return  # stopping already said so; READY now would be a lie
        self._ready = True
        self._last_status = f"{self.name}: {status}"
        self.notifier.ready(self._last_status)
        log.info("%s ready: %s", self.name, status)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the signal handler) at the first stop signal."""
        self._on_stop.append(callback)
        if self._stop.is_set():
            callback()

    def request_stop(self, why: str) -> None:
        if self._stop.is_set():
            return
        log.info("%s stopping: %s", self.name, why)
        self.notifier.stopping(f"{self.name}: stopping ({why})")
        self._stop.set()
        for callback in self._on_stop:
            callback()

    async def stop_requested(self) -> None:
        await self._stop.wait()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # --- inside ------------------------------------------------------------------------

    def _signalled(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            log.warning("%s again: already stopping", sig.name)
            return
        self.request_stop(sig.name)

    def _status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.notifier.status(text)

    def _refresh_status(self, describe: Callable[[], str]) -> None:
        try:
            text = describe()
        except Exception:  # a status line must never stop the watchdog pings
            log.exception("describing %s for systemd failed", self.name)
            return
        self._status(f"{self.name}: {text}")

    async def _tick(self) -> None:
        interval = self.notifier.watchdog_interval_s
        while True:
            if interval is not None:
                self.notifier.watchdog()
            if self._ready and not self._stop.is_set() and self._describe is not None:
                self._refresh_status(self._describe)
            await asyncio.sleep(interval if interval is not None else STATUS_REFRESH_S)
