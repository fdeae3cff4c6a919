"""Processes the lab started: is a pid still ours, stop it, show its log.

The lab stops what it started by pid, and a pid can be reused by an unrelated
process once ours has exited, so every check also looks for a marker (the
config file the daemon was started with) on the process's command line.

A command line is not always there to read: while a process execs, the
kernel shows an empty one for a moment (the parent of a posix_spawn is let
go before its child's exec has set up the new arguments). Whether a process
the lab itself spawned has exited is therefore asked of waitpid, which can't
be fooled by an exec in progress (`ended`); the marker only tells processes
started by another run of the lab.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from edgesync.lab.errors import LabError

POLL_INTERVAL_S = 0.05
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


def is_ours(pid: int | None, marker: str | Path) -> bool:
    """Whether `pid` is alive, not a zombie, and has `marker` among its arguments."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and os.fsencode(str(marker)) in cmdline


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` itself holds a TCP socket listening on `port` (in its
    own network namespace), as /proc shows it: not merely someone on that port."""
    listening = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == TCP_LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                listening.add(f"socket:[{fields[9]}]")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in listening:
                return True
        except OSError:
            continue
    return False


# The daemons this process spawned (`spawned`) and, once reaped, their exit
# statuses, kept for whoever asks how one ended after another check reaped it.
_children: dict[int, int | None] = {}


def spawned(pid: int) -> None:
    """Note a daemon this process has just spawned: its liveness is asked of waitpid from now on."""
    _children[pid] = None


def reap(pid: int) -> bool:
    """Collect `pid`'s exit status if it is our child; True if it has exited."""
    if pid in _children:
        return _exit_status(pid) is not None
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: someone else reaps it
        return False
    return reaped == pid


def ended(pid: int, marker: str | Path) -> str | None:
    """How `pid` ended ("exit status 2", "killed by SIGKILL", or "gone" for
    a process another run of the lab started), or None while it runs. A
    daemon this process spawned is asked of waitpid, so an exec in progress
    (an empty command line for a moment) is not taken for an exit; any
    other process is known by its marker."""
    if pid not in _children:
        return None if is_ours(pid, marker) else "gone"
    status = _exit_status(pid)
    if status is None:
        return None
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def running(pid: int | None, marker: str | Path) -> bool:
    """Whether `pid` is a live process the lab started (see `ended`)."""
    return pid is not None and pid > 0 and ended(pid, marker) is None


def _exit_status(pid: int) -> int | None:
    if pid not in _children:
        return None
    if _children[pid] is None:
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # someone else reaped it: no status to tell, but gone
            reaped, status = pid, 0xFF00  # as `exit 255`
        if reaped == pid:
            _children[pid] = status
    return _children[pid]


async def stop(pid: int | None, marker: str | Path, *, timeout_s: float, kill: bool = False) -> None:
    """SIGTERM and wait up to `timeout_s`, then SIGKILL; with `kill`, SIGKILL at
    once (the way a crash stops a daemon). Does nothing if `pid` isn't ours."""
    steps = [(signal.SIGKILL, 5.0)] if kill else [(signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)]
    for sig, patience in steps:
        if not running(pid, marker):
            break
        assert pid is not None
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline and running(pid, marker):
            await asyncio.sleep(POLL_INTERVAL_S)
    if pid:
        reap(pid)  # our child's zombie would otherwise linger
    if running(pid, marker):
        raise LabError(f"process {pid} ({marker}) did not exit")


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (keys, passwords, tokens)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file left from before keeps its mode otherwise
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def tail(path: Path | None, lines: int = 30) -> str:
    """The end of a log (and of its `.stderr` file), to put in an error message."""
    if path is None:
        return ""
    chunks = []
    for p in (path, path.with_suffix(".stderr")):
        try:
            text = p.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        if text:
            chunks.append(f"\n--- last lines of {p} ---\n" + "\n".join(text))
    return "".join(chunks)


async def run_tool(argv: list[str], *, what: str, timeout_s: float) -> str:
    """Run a lab tool (glance-manage, keystone-manage, ceph …) to its end:
    its stdout, or LabError naming `what` with the tail of its output."""
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise LabError(f"{what} took over {timeout_s:g} s") from None
    if proc.returncode != 0:
        raise LabError(f"{what} failed ({proc.returncode}):\n{(out + err).decode(errors='replace')[-3000:]}")
    return out.decode()
