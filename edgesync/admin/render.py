"""Human output: sizes, rates, durations, tables, and a copy's live progress.

On a terminal the progress block is redrawn in place (cursor up, clear line);
anywhere else (a pipe, a log, CI) each store gets a plain line when its state
changes and at most every `PLAIN_EVERY_S` while it runs, so logs stay short.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TextIO

from edgesync.admin.progress import StoreProgress

PLAIN_EVERY_S = 5.0
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_CURSOR_UP = "\x1b[{}A"
_CLEAR_LINE = "\r\x1b[2K"


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_rate(bps: float | None) -> str:
    return "?" if bps is None else f"{human_bytes(bps)}/s"


def human_duration(seconds: float | None) -> str:
    """0:07, 12:30, 1:02:03; "?" when unknown."""
    if seconds is None:
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def human_age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{human_duration(seconds)} ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, the last one left ragged."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [str(row[-1])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def progress_line(row: StoreProgress, store_width: int = 0) -> str:
    state = row.state.replace("_", " ")
    head = f"{row.store.ljust(store_width)}  {state:<11}"
    if row.site_down:
        return f"{head} waiting: the site is down (it goes on when its agent is back, "\
               "or fails at the hub's offline deadline)"
    if row.state == "running":
        return f"{head} {_running(row)}"
    if row.state == "done":
        took = f" in {human_duration(row.elapsed_s)}" if row.elapsed_s is not None else ""
        rate = f" ({human_rate(row.total_bytes / row.elapsed_s)})" if row.elapsed_s else ""
        return f"{head} {human_bytes(row.total_bytes)}{took}{rate}"
    if row.state in ("failed", "rolled_back"):
        return f"{head} {row.reason}".rstrip()
    return head.rstrip()


def _running(row: StoreProgress) -> str:
    if row.fraction is None:  # the total comes with the first progress report
        return f"{human_bytes(row.done_bytes)} so far" if row.done_bytes else "starting"
    return (f"{human_bytes(row.done_bytes)} / {human_bytes(row.total_bytes)}  {row.fraction:4.0%}  "
            f"{human_rate(row.rate_bps)}  ETA {human_duration(row.eta_s)}")


class ProgressDisplay:
    """Shows each poll's per-store progress on `out`."""

    def __init__(self, out: TextIO, *, tty: bool, clock: Callable[[], float] = time.monotonic,
                 plain_every_s: float = PLAIN_EVERY_S) -> None:
        self.out = out
        self.tty = tty
        self._clock = clock
        self._plain_every_s = plain_every_s
        self._drawn = 0
        self._last: dict[str, tuple[str, float]] = {}  # store → (state, when its line was printed)

    def show(self, rows: Sequence[StoreProgress]) -> None:
        width = max((len(r.store) for r in rows), default=0)
        if self.tty:
            self._redraw([progress_line(r, width) for r in rows])
        else:
            for row in rows:
                if self._plain_due(row):
                    self.out.write(progress_line(row, width) + "\n")
        self.out.flush()

    def _redraw(self, lines: list[str]) -> None:
        if self._drawn:
            self.out.write(_CURSOR_UP.format(self._drawn))
        for line in lines:
            self.out.write(f"{_CLEAR_LINE}{line}\n")
        self._drawn = len(lines)

    def _plain_due(self, row: StoreProgress) -> bool:
        """A line when the state changes, and while running at most every plain_every_s."""
        now = self._clock()
        state = f"{row.state}{' (site down)' if row.site_down else ''}"
        last = self._last.get(row.store)
        if last is not None and last[0] == state:
            if row.state != "running" or now - last[1] < self._plain_every_s:
                return False
        self._last[row.store] = (state, now)
        return True
