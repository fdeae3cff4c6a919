"""A copy's progress per store, as the admin CLI follows it.

The hub's task JSON says, per store, the state and how many bytes of data are
copied out of how many (holes are never moved, so they count in neither).
Rates are measured here, from successive polls: the hub records progress
about once a second, so one poll to the next is too jumpy; a sliding window
of a few seconds gives a rate worth an ETA.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RATE_WINDOW_S = 5.0
# Below this much elapsed time between samples, a rate is noise.
MIN_RATE_SPAN_S = 0.5
# The hub records progress about once a second, so polls between two records
# repeat the last count; those repeats are left out (they would drag the rate
# down), unless nothing moved for this long: then the copy is slowing or stalled.
STALLED_AFTER_S = 3.0

FINISHED = ("done", "failed", "rolled_back")


class RateMeter:
    """Bytes per second over the last `window_s` seconds of samples."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at_s: float, done_bytes: int) -> None:
        if self._samples:
            last_s, last_bytes = self._samples[-1]
            if done_bytes < last_bytes:
                self._samples.clear()  # the copy restarted (a retry): rates from before mean nothing
            elif done_bytes == last_bytes and at_s - last_s < STALLED_AFTER_S:
                return
        self._samples.append((at_s, done_bytes))
        # Keep one sample at or before the window's start, so a rate spans the whole window.
        while len(self._samples) > 2 and self._samples[1][0] <= at_s - self.window_s:
            self._samples.popleft()

    def rate_bps(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        if t1 - t0 < MIN_RATE_SPAN_S:
            return None
        return (b1 - b0) / (t1 - t0)


@dataclass
class StoreProgress:
    """One store's part of a copy, as shown."""

    store: str
    state: str
    done_bytes: int = 0
    total_bytes: int = 0
    reason: str = ""
    rate_bps: float | None = None
    eta_s: float | None = None
    elapsed_s: float | None = None  # for a finished store: from when it started to when it finished
    site_down: bool = False  # unfinished, and its site is down: it waits for the site's agent

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def fraction(self) -> float | None:
        if self.total_bytes <= 0:
            return None
        return min(1.0, self.done_bytes / self.total_bytes)


@dataclass
class _Seen:
    meter: RateMeter = field(default_factory=RateMeter)
    pending_s: float | None = None  # the last poll that found it pending
    started_s: float | None = None
    finished_s: float | None = None


class CopyTracker:
    """Turns successive polls of a task into per-store progress with rates."""

    def __init__(self, clock: Callable[[], float], window_s: float = RATE_WINDOW_S) -> None:
        self._clock = clock
        self._window_s = window_s
        self._seen: dict[str, _Seen] = {}

    def update(self, task: dict[str, Any], down_sites: frozenset[str] = frozenset()) -> list[StoreProgress]:
        """This poll's rows; `down_sites`: sites the hub says are down."""
        now = self._clock()
        jobs: dict[str, dict[str, Any]] = task.get("result", {}).get("stores", {})
        rows = [self._one(store, jobs[store], now) for store in _store_order(task, jobs)]
        for row in rows:
            row.site_down = row.store in down_sites and not row.finished
        return rows

    def _one(self, store: str, job: dict[str, Any], now: float) -> StoreProgress:
        seen = self._seen.setdefault(store, _Seen(RateMeter(self._window_s)))
        row = StoreProgress(store, job.get("state", "pending"), int(job.get("bytes_done") or 0),
                            int(job.get("bytes_total") or 0), job.get("reason") or "")
        if row.state == "pending":
            seen.pending_s = now
        elif seen.started_s is None:
            # A copy found finished at its first sight (one made from blocks the
            # site held can take less than a poll) started after the last poll
            # that found it pending: without that, it would show 0 s and no rate.
            seen.started_s = seen.pending_s if row.finished and seen.pending_s is not None else now
        if row.finished:
            seen.finished_s = seen.finished_s or now
            row.elapsed_s = seen.finished_s - (seen.started_s or now)
            return row
        if row.state == "running":
            seen.meter.add(now, row.done_bytes)
            row.rate_bps = seen.meter.rate_bps()
            row.eta_s = eta_s(row.done_bytes, row.total_bytes, row.rate_bps)
        return row


def eta_s(done_bytes: int, total_bytes: int, rate_bps: float | None) -> float | None:
    """Seconds left at `rate_bps`; None while the total or a rate is unknown."""
    if total_bytes <= 0 or rate_bps is None or rate_bps <= 0:
        return None
    return max(0.0, (total_bytes - done_bytes) / rate_bps)


def outcome(task: dict[str, Any]) -> str:
    """"success": every store has its copy; "partial": failures were allowed
    and some stores failed; "failed": the copy failed (nothing new is kept
    when all stores had to succeed); "running": not finished yet."""
    status = task.get("status")
    if status == "failure":
        return "failed"
    if status != "success":
        return "running"
    states = [job.get("state") for job in task.get("result", {}).get("stores", {}).values()]
    return "partial" if any(s in ("failed", "rolled_back") for s in states) else "success"


def _store_order(task: dict[str, Any], jobs: dict[str, Any]) -> list[str]:
    """The order the copy was asked for, then any other store the task reports."""
    asked = task.get("input", {}).get("import_req", {}).get("stores") or []
    return [s for s in asked if s in jobs] + [s for s in jobs if s not in asked]
