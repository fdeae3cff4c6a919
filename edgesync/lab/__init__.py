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


class LabError(EdgesyncError):
    """The lab could not be brought up or down."""


def read_info(directory: Path) -> dict[str, Any]:
    path = directory / LAB_FILE
    if not path.exists():
        raise LabError(f"no lab in {directory} (run `edgesync lab up --dir {directory}`)")
    return json.loads(path.read_text())


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


async def up(directory: Path, *, store: str = "file", sites: list[str] | None = None) -> dict[str, Any]:
    sites = sites or ["central", "dcn0", "dcn1"]
    if len(set(sites)) != len(sites) or not sites:
        raise LabError(f"--sites needs distinct site names, got {sites}")
    if (directory / LAB_FILE).exists():
        info = read_info(directory)
        if pid_alive(info.get("hub_pid")):
            return info  # already running: change nothing
        await down(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clusters = await _start_ceph(directory, sites) if store == "rbd" else {}
    _write_site_files(directory, sites, store, clusters)
    port = _free_port()
    admin_token = secrets.token_hex(16)
    member_token = secrets.token_hex(16)
    _write_hub_files(directory, port, admin_token, member_token)
    hub_pid = _spawn_hub(directory)
    hub_url = f"http://127.0.0.1:{port}"
    info = {
        "dir": str(directory), "store": store, "hub_url": hub_url, "hub_pid": hub_pid,
        "admin_token": admin_token, "member_token": member_token,
        "hub_config": str(directory / "hub.toml"),
        "sites": {name: _site_info(name, i, store, clusters.get(name)) for i, name in enumerate(sites)},
    }
    (directory / LAB_FILE).write_text(json.dumps(info, indent=2))
    try:
        await _wait_ready(hub_url, hub_pid, directory / "logs" / "hub.log")
    except LabError:
        await down(directory)
        raise
    return info


async def down(directory: Path) -> None:
    info = read_info(directory) if (directory / LAB_FILE).exists() else {}
    await _stop_pid(info.get("hub_pid"))
    if (directory / "ceph").exists():
        from edgesync.lab import ceph

        await ceph.down(directory / "ceph")
    if info:
        info["hub_pid"] = None
        (directory / LAB_FILE).write_text(json.dumps(info, indent=2))


def _site_info(name: str, index: int, store: str, cluster: Any) -> dict[str, Any]:
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
        "agent_pid": None,
        "metrics_url": None,
    }


def _store_dir_for(name: str) -> Path:
    return Path("stores") / name


async def _start_ceph(directory: Path, sites: list[str]) -> dict[str, Any]:
    from edgesync.lab import ceph

    return await ceph.up(directory / "ceph", sites)


def _toml_str(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _write_site_files(directory: Path, sites: list[str], store: str, clusters: dict[str, Any]) -> None:
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
        (site_dir / f"{name}.toml").write_text("\n".join(lines) + "\n")


def _write_hub_files(directory: Path, port: int, admin_token: str, member_token: str) -> None:
    tokens = directory / "tokens.toml"
    tokens.write_text(
        f'[tokens.{admin_token}]\nuser = "admin"\nproject = "admin"\nroles = ["admin"]\n\n'
        f'[tokens.{member_token}]\nuser = "demo"\nproject = "demo"\nroles = ["member"]\n'
    )
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
    )


def _spawn_hub(directory: Path) -> int:
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    with (logs / "hub.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgesync", "hub", "--config", str(directory / "hub.toml")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives `lab up`; stopped by pid
        )
    return proc.pid


async def _wait_ready(url: str, pid: int, log_path: Path) -> None:
    deadline = time.monotonic() + HUB_READY_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                raise LabError(f"the hub exited during start-up; its log says:\n{_tail(log_path)}")
            try:
                async with session.get(f"{url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise LabError(f"the hub did not answer within {HUB_READY_TIMEOUT_S:.0f} s:\n{_tail(log_path)}")


async def _stop_pid(pid: int | None, timeout_s: float = 15.0) -> None:
    if not pid_alive(pid):
        return
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
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
