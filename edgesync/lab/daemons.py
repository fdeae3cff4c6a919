"""The lab's hub and agents: started detached with their listening socket
handed over, waited for, stopped by pid.

Readiness is waited for all at once: one poll of the hub's site list tells
which agents it sees up, however many sites there are, and the time allowed
grows with the number of sites (a hundred agents starting together on two
cores take most of a minute).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from edgesync.lab import procs
from edgesync.lab.errors import LabError
from edgesync.lab.ports import in_netns, listening_socket
from edgesync.listen import LISTEN_FD_ENV
from edgesync.tls import TlsConfig, http_session

LAB_FILE = "lab.json"
READY_BASE_S = 30.0
READY_PER_SITE_S = 1.0
POLL_S = 0.25
STOP_TIMEOUT_S = 15.0
SPAWN_TIMEOUT_S = 5.0


def read_info(directory: Path) -> dict[str, Any]:
    path = directory / LAB_FILE
    if not path.exists():
        raise LabError(f"no lab in {directory} (run `edgesync lab up --dir {directory}`)")
    info: dict[str, Any] = json.loads(path.read_text())
    return info


def save_info(directory: Path, info: dict[str, Any]) -> None:
    # 0600: lab.json holds the admin and member tokens.
    tmp = directory / (LAB_FILE + ".tmp")
    procs.write_private(tmp, json.dumps(info, indent=2))
    tmp.replace(directory / LAB_FILE)


def ready_timeout_s(sites: int) -> float:
    return READY_BASE_S + READY_PER_SITE_S * sites


def agent_config(directory: Path, site: str) -> Path:
    return directory / "sites" / f"{site}.toml"


def hub_running(info: dict[str, Any]) -> bool:
    return procs.running(info.get("hub_pid"), info["hub_config"])


def agent_running(directory: Path, site: str, entry: dict[str, Any]) -> bool:
    return procs.running(entry.get("agent_pid"), agent_config(directory, site))


# --- hub -------------------------------------------------------------------------------


async def start_hub(directory: Path, socks: list[socket.socket] | None = None) -> int:
    """Start the lab's hub (if it isn't running) and wait until it serves and
    sees every running agent up; a hub started again recovers what the last
    one left unfinished. `socks` are its listening sockets (else its ports are bound again)."""
    info = read_info(directory)
    if hub_running(info):
        for sock in socks or []:
            sock.close()
        return int(info["hub_pid"])
    central = next(iter(info["sites"].values()))
    socks = socks or _hub_sockets_again(info, central.get("netns"))
    pid = await _spawn(directory, "hub", ["hub", "--config", info["hub_config"]], [socks], central.get("netns"))
    info["hub_pid"] = pid
    save_info(directory, info)
    log_path = directory / "logs" / "hub.log"
    running = {site: entry["agent_pid"] for site, entry in info["sites"].items()
               if agent_running(directory, site, entry)}
    deadline = time.monotonic() + ready_timeout_s(len(info["sites"]))
    await _wait_serving(info, pid, log_path, deadline)
    await _wait_sites_up(directory, info, running, deadline)  # they hear from a new hub afresh
    return pid


async def stop_hub(directory: Path, *, kill: bool = False) -> None:
    """SIGTERM (a clean stop), or SIGKILL with `kill` (a crash: what it was
    doing is left for the next start to recover)."""
    info = read_info(directory)
    await procs.stop(info.get("hub_pid"), info["hub_config"], timeout_s=STOP_TIMEOUT_S, kill=kill)
    info["hub_pid"] = None
    save_info(directory, info)


# --- agents ----------------------------------------------------------------------------


async def start_agents(directory: Path, sites: Iterable[str],
                       socks: dict[str, list[socket.socket]] | None = None) -> dict[str, int]:
    """Start these sites' agents (those not running), each on its socket from
    `socks` (else its recorded port bound again), and wait until the hub sees
    them all up. In a lab whose agents share processes (`agents_per_process`)
    a site's whole process is started: every site of its group not running."""
    socks = dict(socks or {})
    info = read_info(directory)
    started: dict[str, int] = {}
    try:
        wanted = list(sites)
        for site in wanted:
            entry = info["sites"].get(site)
            if entry is None or entry.get("agent_url") is None:
                raise LabError(f"site {site!r} has no agent in the lab in {directory}")
        for group in _groups_to_start(info, wanted):
            to_start = []
            for site in group:
                entry = info["sites"][site]
                if agent_running(directory, site, entry):
                    started[site] = int(entry["agent_pid"])
                    continue
                # Into `socks` until spawned: closed in `finally` if another site's bind fails.
                socks[site] = socks.get(site) or [_bind_again(entry["agent_url"], entry.get("netns"))]
                to_start.append(site)
            if to_start:
                own = [(site, socks.pop(site)) for site in to_start]
                pid = await _spawn_agents(directory, own, info["sites"][to_start[0]].get("netns"))
                for site in to_start:
                    info["sites"][site]["agent_pid"] = started[site] = pid
    finally:
        for leftover in socks.values():
            for sock in leftover:
                sock.close()
        save_info(directory, info)  # the pids of whatever did start, for `down`
    await _wait_sites_up(directory, info, started, time.monotonic() + ready_timeout_s(len(started)))
    return started


def agent_groups(edges: list[str], per_process: int) -> list[list[str]]:
    """The edges in processes of `per_process` agents each, in order."""
    return [edges[i:i + per_process] for i in range(0, len(edges), per_process)]


def _groups_to_start(info: dict[str, Any], sites: list[str]) -> list[list[str]]:
    """The groups (from lab.json's `agent_groups`, one site each if it has
    none) holding these sites, each once, in the order the sites came."""
    groups: list[list[str]] = info.get("agent_groups") or []
    group_of = {site: group for group in groups for site in group}
    chosen: list[list[str]] = []
    for site in sites:
        group = group_of.get(site, [site])
        if group not in chosen:
            chosen.append(group)
    return chosen


async def _spawn_agents(directory: Path, sites: list[tuple[str, list[socket.socket]]], netns: str | None) -> int:
    """One process serving these sites' agents, each on its own sockets.
    Its log is the first site's; the others' log names link to it."""
    configs = [arg for site, _ in sites for arg in ("--config", str(agent_config(directory, site)))]
    first = sites[0][0]
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"agent-{first}.log"
    if log_path.is_symlink():  # it was another site's process's log before
        log_path.unlink()
    for site, _ in sites[1:]:
        link = logs / f"agent-{site}.log"
        link.unlink(missing_ok=True)
        link.symlink_to(log_path.name)
    return await _spawn(directory, f"agent-{first}", ["agent", *configs], [own for _, own in sites], netns)


async def stop_agent(directory: Path, site: str, *, kill: bool = False) -> None:
    """SIGTERM (a clean stop), or SIGKILL with `kill`."""
    info = read_info(directory)
    entry = info["sites"].get(site)
    if entry is None:
        raise LabError(f"no site {site!r} in the lab in {directory}")
    pid = entry.get("agent_pid")
    await procs.stop(pid, agent_config(directory, site), timeout_s=STOP_TIMEOUT_S, kill=kill)
    for other in info["sites"].values():  # the sites sharing its process stopped with it
        if pid and other.get("agent_pid") == pid:
            other["agent_pid"] = None
    entry["agent_pid"] = None
    save_info(directory, info)


async def stop_all(directory: Path, info: dict[str, Any]) -> None:
    """Every agent (together), then the hub; their pids cleared in `info`."""
    sites = info.get("sites", {})
    by_pid = {entry.get("agent_pid"): site for site, entry in sites.items() if entry.get("agent_pid")}
    await asyncio.gather(*(procs.stop(pid, agent_config(directory, site), timeout_s=STOP_TIMEOUT_S)
                           for pid, site in by_pid.items()))  # once per process
    for entry in sites.values():
        entry["agent_pid"] = None
    if "hub_config" in info:
        await procs.stop(info.get("hub_pid"), info["hub_config"], timeout_s=STOP_TIMEOUT_S)
    info["hub_pid"] = None


# --- processes and readiness -----------------------------------------------------------


def _bind_again(url: str, netns: str | None = None) -> socket.socket:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return listening_socket(parts.hostname, parts.port, netns=netns)


def _hub_sockets_again(info: dict[str, Any], netns: str | None) -> list[socket.socket]:
    """Where the hub listens in the lab (its config's address; in the WAN lab,
    in central's namespace) and, if that is elsewhere, where lab.json's
    hub_url reaches it from the machine's own namespace."""
    listen = info.get("hub_listen") or urlsplit(info["hub_url"]).netloc
    socks = [_bind_again(f"http://{listen}", netns)]
    if netns is not None:
        socks.append(_bind_again(info["hub_url"]))
    return socks


async def _spawn(directory: Path, name: str, args: list[str], groups: list[list[socket.socket]],
                 netns: str | None) -> int:
    """Start `edgesync ARGS` detached (its own session: it outlives `lab up`),
    in network namespace `netns` if given, serving on the sockets of `groups`
    (one group per daemon in the process), its output (stdout, stderr: its
    log lines and anything Python says before logging is set up) appended to
    `logs/NAME.log`.

    Spawned straight into the namespace (from a thread that entered it), not
    through `ip netns exec`: that execs the daemon a second time, after this
    function has seen its command line, and a liveness check landing in that
    exec read an empty command line and took a starting agent for dead."""
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "edgesync", *args]
    fds = ";".join(",".join(str(sock.fileno()) for sock in group) for group in groups)
    socks = [sock for group in groups for sock in group]
    try:
        for sock in socks:
            sock.set_inheritable(True)
        with (logs / f"{name}.log").open("ab") as log:
            def spawn() -> int:
                return os.posix_spawn(sys.executable, argv, {**os.environ, LISTEN_FD_ENV: fds}, file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log.fileno(), 1),
                    (os.POSIX_SPAWN_DUP2, log.fileno(), 2),
                ], setsid=True)
            pid = in_netns(netns, spawn) if netns else spawn()
    finally:
        for sock in socks:
            sock.close()  # the daemon holds its own copies now
    procs.spawned(pid)
    # posix_spawn returns while the exec is still under way (its command line
    # reads empty for a moment); wait for it, so that a marker check made by
    # a later `lab` command finds the daemon.
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while not procs.is_ours(pid, args[-1]) and not procs.reap(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return pid


def _start_failure(name: str, how: str, log_path: Path) -> LabError:
    """Why start-up failed: how the daemon ended and the end of its log, or that its log is empty."""
    said = procs.tail(log_path)
    return LabError(f"{name} exited during start-up ({how}); " + (f"its log says:{said}" if said
                                                                    else f"its log {log_path} is empty"))


def lab_session(info: dict[str, Any]) -> aiohttp.ClientSession:
    """An HTTP client for the lab's daemons: https:// verified against the lab's CA."""
    ca_file = info.get("ca_file")
    return http_session(TlsConfig(ca_file=Path(ca_file)) if ca_file else TlsConfig())


async def _wait_serving(info: dict[str, Any], pid: int, log_path: Path, deadline: float) -> None:
    url, marker = info["hub_url"], info["hub_config"]
    async with lab_session(info) as session:
        while time.monotonic() < deadline:
            how = procs.ended(pid, marker)
            if how is not None:
                raise _start_failure(log_path.stem, how, log_path)
            try:
                async with session.get(f"{url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(POLL_S)
    raise LabError(f"{log_path.stem} did not answer in time:{procs.tail(log_path)}")


async def _wait_sites_up(directory: Path, info: dict[str, Any], agents: dict[str, int], deadline: float) -> None:
    """Until the hub has every agent's online status and a heartbeat (before
    that it would leave a delete for the site pending); fails as soon as one
    of them exits."""
    waiting = dict(agents)
    headers = {"X-Auth-Token": info["admin_token"]}
    async with lab_session(info) as session:
        while waiting:
            for site, pid in waiting.items():
                how = procs.ended(pid, agent_config(directory, site))
                if how is not None:
                    raise _start_failure(f"agent-{site}", how, directory / "logs" / f"agent-{site}.log")
            for site in await _sites_up(session, info["hub_url"], headers):
                waiting.pop(site, None)
            if waiting and time.monotonic() > deadline:
                raise LabError(f"the hub did not see these agents up in time: {', '.join(sorted(waiting))}; "
                               f"see {directory / 'logs'}")
            if waiting:
                await asyncio.sleep(POLL_S)


async def _sites_up(session: aiohttp.ClientSession, hub_url: str, headers: dict[str, str]) -> list[str]:
    try:
        async with session.get(f"{hub_url}/edgesync/v1/sites", headers=headers,
                               timeout=aiohttp.ClientTimeout(total=5)) as r:
            if r.status != 200:
                return []
            return [s["name"] for s in (await r.json())["sites"] if s.get("up")]
    except (TimeoutError, aiohttp.ClientError):
        return []
