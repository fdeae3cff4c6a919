"""The admin CLI's progress: rates over a window, ETA, the outcome of a task,
and how the live display draws on a terminal and in a log."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from edgesync.admin.progress import CopyTracker, RateMeter, StoreProgress, eta_s, outcome
from edgesync.admin.render import (
    ProgressDisplay,
    human_age,
    human_bytes,
    human_duration,
    human_rate,
    progress_line,
    table,
)

MiB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def task(status: str = "processing", **jobs: tuple[str, int, int] | tuple[str, int, int, str]) -> dict[str, Any]:
    """A task as GET /v2/images/{id}/tasks shows it: store=(state, done, total[, reason])."""
    stores = {s: {"state": j[0], "bytes_done": j[1], "bytes_total": j[2], "reason": j[3] if len(j) > 3 else ""}
              for s, j in jobs.items()}
    return {"id": "t1", "status": status, "message": "",
            "input": {"import_req": {"stores": list(jobs)}}, "result": {"stores": stores}}


# --- rate and ETA -----------------------------------------------------------------------


def test_rate_is_measured_over_the_window_not_since_the_start() -> None:
    meter = RateMeter(window_s=5.0)
    meter.add(0.0, 0)
    meter.add(10.0, 10 * MiB)  # 1 MiB/s for ten seconds …
    for t in range(11, 16):  # … then 4 MiB/s
        meter.add(float(t), 10 * MiB + (t - 10) * 4 * MiB)
    assert meter.rate_bps() == pytest.approx(4 * MiB)


def test_repeated_counts_between_the_hubs_records_do_not_drag_the_rate_down() -> None:
    meter = RateMeter(window_s=5.0)
    for t in range(6):  # the hub records once a second, polled twice a second
        meter.add(float(t), t * 2 * MiB)
        meter.add(t + 0.5, t * 2 * MiB)
    assert meter.rate_bps() == pytest.approx(2 * MiB)


def test_a_stalled_copy_shows_its_rate_falling_to_zero() -> None:
    meter = RateMeter(window_s=5.0)
    meter.add(0.0, 0)
    meter.add(1.0, 8 * MiB)
    for t in range(2, 20):
        meter.add(float(t), 8 * MiB)
    assert meter.rate_bps() == 0


def test_no_rate_from_a_single_sample_or_a_restarted_copy() -> None:
    meter = RateMeter()
    assert meter.rate_bps() is None
    meter.add(0.0, 0)
    meter.add(2.0, 4 * MiB)
    assert meter.rate_bps() == pytest.approx(2 * MiB)
    meter.add(3.0, 1 * MiB)  # fewer bytes than before: a retry started over
    assert meter.rate_bps() is None


def test_eta_needs_a_total_and_a_rate() -> None:
    assert eta_s(25 * MiB, 100 * MiB, 5 * MiB) == pytest.approx(15.0)
    assert eta_s(0, 0, 5 * MiB) is None
    assert eta_s(0, 100, None) is None
    assert eta_s(0, 100, 0.0) is None


def test_tracker_gives_rate_eta_and_time_taken_per_store() -> None:
    clock = Clock()
    tracker = CopyTracker(clock)
    tracker.update(task(dcn0=("running", 0, 64 * MiB), dcn1=("pending", 0, 0)))
    clock.now += 2
    rows = tracker.update(task(dcn0=("running", 16 * MiB, 64 * MiB), dcn1=("running", 0, 0)))
    assert [r.store for r in rows] == ["dcn0", "dcn1"]
    assert rows[0].rate_bps == pytest.approx(8 * MiB) and rows[0].eta_s == pytest.approx(6.0)
    assert rows[1].rate_bps is None and rows[1].eta_s is None
    clock.now += 6
    rows = tracker.update(task("success", dcn0=("done", 64 * MiB, 64 * MiB), dcn1=("failed", 0, 0, "boom")))
    assert rows[0].finished and rows[0].elapsed_s == pytest.approx(8.0)
    assert rows[1].reason == "boom" and rows[1].elapsed_s == pytest.approx(6.0)


def test_a_copy_finished_between_two_polls_took_the_time_since_it_was_last_seen_pending() -> None:
    """A site that holds most blocks can finish a copy within one poll: it
    started after the poll that found it pending, not at the poll that
    found it done (which would be 0 s and no rate)."""
    clock = Clock()
    tracker = CopyTracker(clock)
    tracker.update(task(dcn0=("pending", 0, 0)))
    clock.now += 0.5
    [row] = tracker.update(task("success", dcn0=("done", 16 * MiB, 16 * MiB)))
    assert row.elapsed_s == pytest.approx(0.5)
    [row] = CopyTracker(clock).update(task("success", dcn0=("done", 16 * MiB, 16 * MiB)))
    assert row.elapsed_s == 0  # never seen under way: no time to tell


@pytest.mark.parametrize(("status", "states", "expected"), [
    ("success", ["done", "done"], "success"),
    ("success", ["done", "failed"], "partial"),
    ("failure", ["rolled_back", "failed"], "failed"),
    ("failure", ["failed"], "failed"),
    ("processing", ["running"], "running"),
])
def test_outcome_of_a_task(status: str, states: list[str], expected: str) -> None:
    jobs = {f"dcn{i}": (s, 0, 0) for i, s in enumerate(states)}
    assert outcome(task(status, **jobs)) == expected  # type: ignore[arg-type]


# --- formatting ---------------------------------------------------------------------------


def test_human_units() -> None:
    assert human_bytes(0) == "0 B" and human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(512 * MiB) == "512.0 MiB"
    assert human_bytes(3 * 1024**4) == "3.0 TiB" and human_bytes(None) == "?"
    assert human_rate(2 * MiB) == "2.0 MiB/s" and human_rate(None) == "?"
    assert human_duration(7) == "0:07" and human_duration(750) == "12:30"
    assert human_duration(3723) == "1:02:03" and human_duration(None) == "?"
    assert human_age(5) == "0:05 ago" and human_age(None) == "-"


def test_table_pads_columns_to_the_widest_cell() -> None:
    assert table(["A", "LONGER"], [("xyz", "1"), ("q", "22")]).splitlines() == [
        "A    LONGER", "xyz  1", "q    22"]


def test_progress_lines_say_what_each_state_means() -> None:
    running = StoreProgress("dcn0", "running", 16 * MiB, 64 * MiB, rate_bps=8 * MiB, eta_s=6)
    assert progress_line(running) == "dcn0  running     16.0 MiB / 64.0 MiB   25%  8.0 MiB/s  ETA 0:06"
    assert progress_line(StoreProgress("dcn0", "running")) == "dcn0  running     starting"
    done = StoreProgress("dcn0", "done", 64 * MiB, 64 * MiB, elapsed_s=8)
    assert progress_line(done) == "dcn0  done        64.0 MiB in 0:08 (8.0 MiB/s)"
    failed = StoreProgress("dcn1", "rolled_back", reason="rolled back: another store failed")
    assert progress_line(failed, 6) == "dcn1    rolled back rolled back: another store failed"
    assert progress_line(StoreProgress("dcn1", "pending")) == "dcn1  pending"


def test_a_store_whose_site_is_down_says_it_waits_and_a_log_line_says_so_once() -> None:
    tracker = CopyTracker(Clock())
    rows = tracker.update(task(dcn0=("running", 0, 0), dcn1=("done", 8, 8)), frozenset({"dcn0", "dcn1"}))
    assert rows[0].site_down and not rows[1].site_down  # a finished store waits for nothing
    assert progress_line(rows[0]).startswith("dcn0  running     waiting: the site is down")
    out = io.StringIO()
    display = ProgressDisplay(out, tty=False, clock=Clock())
    display.show(tracker.update(task(dcn0=("running", 0, 0)), frozenset()))
    display.show(tracker.update(task(dcn0=("running", 0, 0)), frozenset({"dcn0"})))
    display.show(tracker.update(task(dcn0=("running", 0, 0)), frozenset({"dcn0"})))
    assert ["waiting" in line for line in out.getvalue().splitlines()] == [False, True]


# --- the live display ------------------------------------------------------------------------


def _rows(*states: tuple[str, str, int]) -> list[StoreProgress]:
    return [StoreProgress(store, state, done, 64 * MiB) for store, state, done in states]


def test_on_a_terminal_the_block_is_redrawn_in_place() -> None:
    out = io.StringIO()
    display = ProgressDisplay(out, tty=True)
    display.show(_rows(("dcn0", "running", 0), ("dcn1", "pending", 0)))
    first = out.getvalue()
    assert not re.search(r"\x1b\[\d+A", first) and first.count("\n") == 2  # the first frame moves no cursor
    display.show(_rows(("dcn0", "running", MiB), ("dcn1", "running", 0)))
    second = out.getvalue()[len(first):]
    assert second.startswith("\x1b[2A")  # back up over the two lines, then rewrite them
    assert second.count("\r\x1b[2K") == 2 and "1.0 MiB / 64.0 MiB" in second


def test_in_a_log_a_line_comes_when_a_state_changes_or_every_few_seconds() -> None:
    out, clock = io.StringIO(), Clock()
    display = ProgressDisplay(out, tty=False, clock=clock, plain_every_s=5)
    display.show(_rows(("dcn0", "running", 0)))
    for i in range(1, 8):  # seven polls within 3.5 s: nothing new to say
        clock.now += 0.5
        display.show(_rows(("dcn0", "running", i * MiB)))
    clock.now += 2  # 5.5 s after the last line
    display.show(_rows(("dcn0", "running", 9 * MiB)))
    display.show(_rows(("dcn0", "done", 64 * MiB)))
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue()
    assert [line.split()[1] for line in lines] == ["running", "running", "done"]
    assert "9.0 MiB / 64.0 MiB" in lines[1]
