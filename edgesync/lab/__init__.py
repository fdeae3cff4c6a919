"""A local multi-site deployment: `edgesync lab up|down|status`.

Everything lives under one directory (default `.lab`): the site files, the hub
config and tokens, the hub's state, one Ceph cluster per site when the store is
rbd, the logs, and `lab.json` describing it all. Processes are started detached
and stopped by pid. `up` on a running lab changes nothing; `up` on a stopped
lab starts it afresh.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from edgesync.errors import EdgesyncError

LAB_FILE = "lab.json"
HUB_READY_TIMEOUT_S = 30.0
# How long the lab's hub lets a copy wait for a site that is down before that
# store fails with "site offline" (tests of that deadline ask for less).
OFFLINE_DEADLINE_S = 300.0


class LabError(EdgesyncError):
    """The lab could not be brought up or down."""


def read_info(directory: Path) -> dict[str, Any]:
    path = directory / LAB_FILE
    if not path.exists():
        raise LabError(f"no lab in {directory} (run `edgesync lab up --dir {directory}`)")
    info: dict[str, Any] = json.loads(path.read_text())
    return info


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


async def up(directory: Path, *, store: str = "file", sites: list[str] | None = None,
             agents: bool = True, offline_deadline_s: float = OFFLINE_DEADLINE_S) -> dict[str, Any]:
    """Start the lab and return its lab.json once the hub answers and (with
    `agents`, the default) every edge site's agent is up as the hub sees it.
    Without agents the hub writes every store itself (in-hub mode)."""
    sites = sites or ["central", "dcn0", "dcn1"]
    if len(set(sites)) != len(sites) or not sites:
        raise LabError(f"--sites needs distinct site names, got {sites}")
    if not offline_deadline_s > 0:
        raise LabError(f"--offline-deadline-s must be more than 0, got {offline_deadline_s:g}")
    if (directory / LAB_FILE).exists():
        info = read_info(directory)
        if pid_alive(info.get("hub_pid")):
            return info  # already running: change nothing
        await down(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "logs").mkdir(exist_ok=True)
    clusters = await _start_ceph(directory, sites) if store == "rbd" else {}
    edges = sites[1:] if agents else []
    broker = await _start_broker(directory, edges) if edges else None
    port = _free_port()
    hub_url = f"http://127.0.0.1:{port}"
    agent_ports = {site: _free_port() for site in edges}
    _write_site_files(directory, sites, store, clusters, hub_url=hub_url, broker=broker, agent_ports=agent_ports)
    admin_token = secrets.token_hex(16)
    member_token = secrets.token_hex(16)
    _write_hub_files(directory, port, admin_token, member_token, broker=broker, edges=edges,
                     offline_deadline_s=offline_deadline_s)
    info = {
        "dir": str(directory), "store": store, "hub_url": hub_url, "hub_pid": None,
        "admin_token": admin_token, "member_token": member_token,
        "hub_config": str(directory / "hub.toml"),
        "broker": {"host": broker.host, "port": broker.port} if broker else None,
        "sites": {name: _site_info(name, i, store, clusters.get(name), agent_ports.get(name))
                  for i, name in enumerate(sites)},
    }
    _save(directory, info)
    try:
        await start_hub(directory)
        await asyncio.gather(*(start_agent(directory, site) for site in edges))
    except LabError:
        await down(directory)
        raise
    return read_info(directory)


def _save(directory: Path, info: dict[str, Any]) -> None:
    tmp = directory / (LAB_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(directory / LAB_FILE)


async def start_hub(directory: Path) -> int:
    """Start the lab's hub (if it isn't running) and wait until it serves; a
    hub started again recovers what the last one left unfinished."""
    info = read_info(directory)
    if pid_alive(info.get("hub_pid")):
        return int(info["hub_pid"])
    pid = _spawn(directory, "hub", ["hub", "--config", info["hub_config"]])
    info["hub_pid"] = pid
    _save(directory, info)
    log_path = directory / "logs" / "hub.log"
    await _wait_ready(info["hub_url"], pid, log_path)
    for site, entry in info["sites"].items():  # a restarted hub hears from running agents afresh
        if pid_alive(entry.get("agent_pid")):
            await _wait_site_up(info, site, pid, log_path)
    return pid


async def stop_hub(directory: Path, *, kill: bool = False) -> None:
    """Stop the lab's hub: SIGTERM (a clean stop), or SIGKILL with `kill`
    (a crash: what it was doing is left for the next start to recover)."""
    info = read_info(directory)
    pid = info.get("hub_pid")
    await _stop_pid(pid, kill=kill)
    info["hub_pid"] = None
    _save(directory, info)


async def stop_broker(directory: Path) -> None:
    """Stop the lab's Mosquitto (it saves sessions and queued messages)."""
    from edgesync.lab import mosquitto

    _require_broker(directory)
    await mosquitto.down(directory / "mosquitto")


async def start_broker(directory: Path) -> None:
    """Start the lab's Mosquitto again, on the same port and persistence."""
    from edgesync.lab import mosquitto

    _require_broker(directory)
    await mosquitto.start(directory / "mosquitto")


def _require_broker(directory: Path) -> None:
    if not read_info(directory).get("broker"):
        raise LabError(f"the lab in {directory} has no broker (it was started without --agents)")


async def start_agent(directory: Path, site: str) -> int:
    """Start one site's agent (if it isn't running) and wait until it serves
    and the hub counts the site as up."""
    info = read_info(directory)
    entry = info["sites"].get(site)
    if entry is None or entry.get("agent_url") is None:
        raise LabError(f"site {site!r} has no agent in the lab in {directory}")
    if pid_alive(entry.get("agent_pid")):
        return int(entry["agent_pid"])
    # No await from reading lab.json to saving it: agents started together don't lose each other's pid.
    pid = _spawn(directory, f"agent-{site}", ["agent", "--config", str(directory / "sites" / f"{site}.toml")])
    entry["agent_pid"] = pid
    _save(directory, info)
    log_path = directory / "logs" / f"agent-{site}.log"
    await _wait_ready(entry["agent_url"], pid, log_path)
    await _wait_site_up(info, site, pid, log_path)
    return pid


async def _wait_site_up(info: dict[str, Any], site: str, pid: int, log_path: Path) -> None:
    """Until the hub has the agent's online status and a heartbeat: before
    that it would leave a delete for the site pending."""
    deadline = time.monotonic() + HUB_READY_TIMEOUT_S
    headers = {"X-Auth-Token": info["admin_token"]}
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                raise LabError(f"{log_path.stem} exited during start-up; its log says:\n{_tail(log_path)}")
            try:
                async with session.get(f"{info['hub_url']}/edgesync/v1/sites", headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=2)) as r:
                    sites = {s["name"]: s for s in (await r.json())["sites"]} if r.status == 200 else {}
                    if sites.get(site, {}).get("up"):
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.2)
    raise LabError(f"the hub did not see {site}'s agent up within {HUB_READY_TIMEOUT_S:.0f} s:\n{_tail(log_path)}")


async def stop_agent(directory: Path, site: str, *, kill: bool = False) -> None:
    """Stop one site's agent: SIGTERM (a clean stop), or SIGKILL with `kill`."""
    info = read_info(directory)
    entry = info["sites"].get(site)
    if entry is None:
        raise LabError(f"no site {site!r} in the lab in {directory}")
    pid = entry.get("agent_pid")
    await _stop_pid(pid, kill=kill)
    entry["agent_pid"] = None
    _save(directory, info)


async def _start_broker(directory: Path, edges: list[str]) -> Any:
    from edgesync.lab import mosquitto

    broker = await mosquitto.up(directory / "mosquitto", edges)
    secrets_dir = directory / "secrets"
    secrets_dir.mkdir(exist_ok=True, mode=0o700)
    for user, password in broker.users.items():
        _write_secret(secrets_dir / f"{user}.mqtt", password)
    return broker


async def down(directory: Path) -> None:
    info = read_info(directory) if (directory / LAB_FILE).exists() else {}
    for entry in info.get("sites", {}).values():
        await _stop_pid(entry.get("agent_pid"))
        entry["agent_pid"] = None
    await _stop_pid(info.get("hub_pid"))
    if (directory / "mosquitto").exists():
        from edgesync.lab import mosquitto

        await mosquitto.down(directory / "mosquitto")
    if (directory / "ceph").exists():
        from edgesync.lab import ceph

        await ceph.down(directory / "ceph")
    if info:
        info["hub_pid"] = None
        _save(directory, info)


def _site_info(name: str, index: int, store: str, cluster: Any, agent_port: int | None) -> dict[str, Any]:
    agent_url = f"http://127.0.0.1:{agent_port}" if agent_port else None
    return {
        "role": "central" if index == 0 else "edge",
        "store": store,
        "availability_zone": name,
        "ceph_conf": str(cluster.conf) if cluster else None,
        "pool": cluster.pool if cluster else None,
        "fsid": cluster.fsid if cluster else None,
        "keyring": str(cluster.keyring) if cluster else None,
        "ceph_user": cluster.user if cluster else None,
        "store_path": None if cluster else str(_store_dir_for(name)),
        "agent_url": agent_url,
        "agent_pid": None,
        "metrics_url": f"{agent_url}/metrics" if agent_url else None,
    }


def _store_dir_for(name: str) -> Path:
    return Path("stores") / name


async def _start_ceph(directory: Path, sites: list[str]) -> dict[str, Any]:
    from edgesync.lab import ceph

    return await ceph.up(directory / "ceph", sites)


def _toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _write_site_files(directory: Path, sites: list[str], store: str, clusters: dict[str, Any], *,
                      hub_url: str, broker: Any, agent_ports: dict[str, int]) -> None:
    site_dir = directory / "sites"
    site_dir.mkdir(exist_ok=True)
    for old in site_dir.glob("*.toml"):
        old.unlink()
    for i, name in enumerate(sites):
        lines = [
            f"name = {_toml_str(name)}",
            f'role = "{"central" if i == 0 else "edge"}"',
            f"availability_zone = {_toml_str(name)}",
            "", "[store]", f'type = "{store}"',
            f"description = {_toml_str(f'{name} site store ({store})')}",
        ]
        if store == "rbd":
            c = clusters[name]
            lines += [f"ceph_conf = {_toml_str(c.conf)}", f"pool = {_toml_str(c.pool)}",
                      f"user = {_toml_str(c.user)}", f"keyring = {_toml_str(c.keyring)}"]
        else:
            lines.append(f"path = {_toml_str(directory / _store_dir_for(name))}")
        if name in agent_ports:
            lines += _agent_section(directory, name, hub_url, broker, agent_ports[name])
        (site_dir / f"{name}.toml").write_text("\n".join(lines) + "\n")


def _agent_section(directory: Path, site: str, hub_url: str, broker: Any, port: int) -> list[str]:
    from edgesync.lab import mosquitto

    secrets_dir = directory / "secrets"
    token_file = secrets_dir / f"{site}.token"
    _write_secret(token_file, secrets.token_hex(16))
    user = mosquitto.site_user(site)
    return [
        "", "[agent]", f"hub_url = {_toml_str(hub_url)}", f"token_file = {_toml_str(token_file)}",
        f"state_dir = {_toml_str(directory / 'agents' / site)}", f'listen = "127.0.0.1:{port}"',
        "heartbeat_interval_s = 1",
        "", "[agent.broker]", f"host = {_toml_str(broker.host)}", f"port = {broker.port}",
        f"username = {_toml_str(user)}", f"password_file = {_toml_str(secrets_dir / f'{user}.mqtt')}",
    ]


def _write_secret(path: Path, value: str) -> None:
    path.write_text(value + "\n")
    path.chmod(0o600)


def _write_hub_files(directory: Path, port: int, admin_token: str, member_token: str, *,
                     broker: Any, edges: list[str], offline_deadline_s: float) -> None:
    tokens = directory / "tokens.toml"
    entries = [
        f'[tokens.{admin_token}]\nuser = "admin"\nproject = "admin"\nroles = ["admin"]\n',
        f'[tokens.{member_token}]\nuser = "demo"\nproject = "demo"\nroles = ["member"]\n',
    ]
    for site in edges:  # each agent's token: it pulls central's copies with it
        site_token = (directory / "secrets" / f"{site}.token").read_text().strip()
        entries.append(f'[tokens.{site_token}]\nuser = "agent-{site}"\nproject = "edgesync-agents"\n'
                       'roles = ["agent"]\n')
    tokens.write_text("\n".join(entries))
    tokens.chmod(0o600)
    (directory / "hub.toml").write_text(
        "[hub]\n"
        f'listen = "127.0.0.1:{port}"\n'
        f'state_dir = {_toml_str(directory / "hub-state")}\n'
        f'sites_dir = {_toml_str(directory / "sites")}\n'
        f"tokens_file = {_toml_str(tokens)}\n"
        "show_locations = true\n\n"
        "[import]\n"
        "max_image_size_bytes = 17179869184\n"
        "lock_ttl_s = 120\n\n"
        "[import.uri_filter]\n"
        "# The lab serves test images from 127.0.0.1 on high ports.\n"
        'allowed_schemes = ["http", "https"]\n'
        "allowed_ports = []\n"
        + (_hub_bus_section(directory, broker, offline_deadline_s) if broker else "")
    )


def _hub_bus_section(directory: Path, broker: Any, offline_deadline_s: float) -> str:
    return (
        "\n[bus]\n"
        f"host = {_toml_str(broker.host)}\nport = {broker.port}\n"
        f"username = {_toml_str(broker.hub_user)}\n"
        f"password_file = {_toml_str(directory / 'secrets' / f'{broker.hub_user}.mqtt')}\n"
        "\n[agents]\n"
        "# The lab's agents heartbeat every second; a copy to a site that stays\n"
        "# down this long fails with 'site offline'.\n"
        f"stale_after_s = 5\noffline_deadline_s = {offline_deadline_s:g}\n"
    )


def _spawn(directory: Path, name: str, args: list[str]) -> int:
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    with (logs / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgesync", *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives `lab up`; stopped by pid
        )
    return proc.pid


async def _wait_ready(url: str, pid: int, log_path: Path) -> None:
    deadline = time.monotonic() + HUB_READY_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                raise LabError(f"{log_path.stem} exited during start-up; its log says:\n{_tail(log_path)}")
            try:
                async with session.get(f"{url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.2)
    raise LabError(f"{log_path.stem} did not answer within {HUB_READY_TIMEOUT_S:.0f} s:\n{_tail(log_path)}")


async def _stop_pid(pid: int | None, timeout_s: float = 15.0, *, kill: bool = False) -> None:
    """SIGTERM and wait (SIGKILL after `timeout_s`); with `kill`, SIGKILL at
    once, the way a crash stops a daemon."""
    if not pid_alive(pid):
        return
    assert pid is not None
    os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
