"""How the lab tells whether a daemon it started still runs (edgesync/lab/procs.py).

The WAN lab's start-up flake: an agent spawned through `ip netns exec` was
exec'd a second time after the lab had seen its command line, and a check
landing in that exec read an empty command line and took the starting agent
for dead. A child's liveness now comes from waitpid, not from its command line.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgesync.lab import procs

MARKER = "/nonexistent/edgesync-test-marker.toml"


def spawn(*argv: str) -> int:
    pid = os.posix_spawn(shutil.which(argv[0]) or argv[0], list(argv), dict(os.environ))
    procs.spawned(pid)
    return pid


def wait_ended(pid: int, marker: str = MARKER) -> str:
    deadline = time.monotonic() + 10
    while (how := procs.ended(pid, marker)) is None:
        assert time.monotonic() < deadline, f"{pid} still runs"
        time.sleep(0.01)
    return how


def test_a_live_child_counts_as_running_whatever_its_command_line_reads() -> None:
    # No marker on its command line: what a check sees while the child execs.
    pid = spawn("sleep", "30")
    try:
        assert not procs.is_ours(pid, MARKER)
        assert procs.ended(pid, MARKER) is None
        assert procs.running(pid, MARKER)
    finally:
        os.kill(pid, signal.SIGKILL)
    assert wait_ended(pid) == "killed by SIGKILL"
    assert not procs.running(pid, MARKER)


def test_how_a_child_ended_is_kept_for_whoever_asks_after_it_was_reaped() -> None:
    pid = spawn("sh", "-c", "exit 3", MARKER)
    deadline = time.monotonic() + 10
    while not procs.reap(pid):  # reaped first by someone else (the spawn loop does)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert procs.ended(pid, MARKER) == "exit status 3"
    assert procs.ended(pid, MARKER) == "exit status 3"


def test_a_process_that_is_not_our_child_is_known_by_its_marker(tmp_path: Path) -> None:
    # A grandchild: started by a shell that exits at once, so it is not ours to wait for.
    pid_file = tmp_path / "pid"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(30)' {MARKER}"
    subprocess.run(["sh", "-c", f"{sleeper} & echo $! > {pid_file}"], check=True, stdout=subprocess.DEVNULL)
    pid = int(pid_file.read_text())
    try:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        deadline = time.monotonic() + 10
        while not procs.is_ours(pid, MARKER):  # the shell's fork execs python
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert procs.ended(pid, MARKER) is None
        assert procs.ended(pid, "/another/config.toml") == "gone"  # a reused pid is not ours
    finally:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while procs.ended(pid, MARKER) is None:  # a zombie or reaped by init: not ours to reap either way
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert procs.ended(pid, MARKER) == "gone"


async def test_stop_stops_a_child_whatever_its_command_line_reads() -> None:
    pid = spawn(sys.executable, "-c", "import time; time.sleep(30)")
    await procs.stop(pid, MARKER, timeout_s=10)
    assert procs.ended(pid, MARKER) == "killed by SIGTERM"
