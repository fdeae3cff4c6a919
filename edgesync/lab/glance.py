"""A real Glance as a DCN cloud runs it, on the lab's own Ceph clusters and Keystone.

The source cloud `edgesync adopt --from-glance` is tested and measured
against. Glance (PyPI `glance`) lives in `.venv-glance` (made by `make
setup`, with Debian's rados/rbd bindings linked in), runs on SQLite under
gunicorn, and is configured as a DCN Glance is:

- `enabled_backends = central:rbd, dcn0:rbd, …`: one RBD store per lab site,
  each on that site's own cluster and in the pool edgesync's site uses
  (`images`), so Glance's copies are exactly where edgesync adopts them;
  Glance has a cephx user of its own per cluster (`client.glance`,
  `profile rbd` on that pool), as a real deployment gives it;
- `rbd_thin_provisioning = True` (zeros are not written);
- keystonemiddleware's auth_token against the lab's Keystone, as the service
  user `glance` (service role) this module creates there over Keystone's API;
- `show_multiple_locations` and `show_image_direct_url`, so an admin sees
  every location (what a DCN Glance exposes to Nova and Cinder);
- import methods glance-direct, web-download and copy-image.

`up()` returns a `GlanceLab`; `stop()` ends it. Harness code: it blocks the
loop only on small local files.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from edgesync.lab import procs
from edgesync.lab.errors import LabError
from edgesync.lab.keystone import DOMAIN, SERVICE_PROJECT, password_token
from edgesync.lab.ports import listening_socket
from edgesync.tls import TlsConfig, http_session

GLANCE_USER = "glance"
CEPH_USER = "glance"
READY_TIMEOUT_S = 90.0
MANAGE_TIMEOUT_S = 180.0
CLI_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class GlanceSite:
    """One lab site as Glance's store of the same name sees it."""

    name: str
    ceph_conf: Path  # the lab cluster's own (admin) ceph.conf
    pool: str
    fsid: str


@dataclass
class GlanceLab:
    url: str  # the image endpoint, e.g. http://127.0.0.1:PORT
    pid: int
    root: Path
    stores: list[str]

    @property
    def gunicorn_conf(self) -> Path:
        return self.root / "gunicorn.conf.py"

    @property
    def log(self) -> Path:
        return self.root / "glance-api.log"


def venv_bin() -> Path:
    """Where Glance's own venv keeps its commands (EDGESYNC_GLANCE_VENV overrides)."""
    default = Path(__file__).resolve().parents[2] / ".venv-glance"
    return Path(os.environ.get("EDGESYNC_GLANCE_VENV", default)) / "bin"


def sites_of(lab_info: dict[str, Any]) -> list[GlanceSite]:
    """The rbd sites of a lab (lab.json), central first, as Glance stores."""
    sites = [GlanceSite(name, Path(s["ceph_conf"]), s["pool"], s["fsid"])
             for name, s in lab_info["sites"].items() if s.get("ceph_conf")]
    if not sites:
        raise LabError("the lab has no rbd sites (start it with --store rbd)")
    return sites


async def up(root: Path, sites: list[GlanceSite], *, auth_url: str, admin_auth: dict[str, str],
             ca_file: Path | None = None) -> GlanceLab:
    """Configure, bootstrap and start Glance under `root`; `admin_auth` is a
    clouds.yaml auth block of a Keystone admin (to create Glance's service user);
    `ca_file` verifies an https Keystone (the lab's CA)."""
    if not (venv_bin() / "glance-manage").exists():
        raise LabError(f"Glance is not installed in {venv_bin().parent} (run `make setup`)")
    root.mkdir(parents=True, exist_ok=True)
    (root / "glance.sqlite").unlink(missing_ok=True)
    for sub in ("staging", "tasks", "ceph"):
        (root / sub).mkdir(exist_ok=True)
    password = await _service_user(auth_url, admin_auth, ca_file)
    confs = await asyncio.gather(*(_ceph_client(root, site) for site in sites))
    with listening_socket("127.0.0.1") as sock:
        url = "http://{}:{}".format(*sock.getsockname()[:2])
        _write_conf(root, sites, dict(zip([s.name for s in sites], confs, strict=True)), url=url,
                    auth_url=auth_url, password=password, ca_file=ca_file)
        await _manage(root, "db_sync")
        pid = _spawn(root, sock)
    lab = GlanceLab(url=url, pid=pid, root=root, stores=[s.name for s in sites])
    try:
        await _wait_ready(lab)
    except BaseException:
        await stop(lab)
        raise
    return lab


async def stop(lab: GlanceLab) -> None:
    await procs.stop(lab.pid, lab.gunicorn_conf, timeout_s=STOP_TIMEOUT_S)


# --- Keystone and Ceph identities ----------------------------------------------------


async def _service_user(auth_url: str, admin: dict[str, str], ca_file: Path | None) -> str:
    """Glance's service user in project `service` with the service role (it
    validates users' tokens); its new password. Made again if it exists."""
    password = secrets.token_urlsafe(16)
    async with http_session(TlsConfig(ca_file=ca_file), timeout=aiohttp.ClientTimeout(total=30)) as session:
        token = await password_token(session, auth_url, admin["username"], admin["password"], admin["project_name"])

        async def call(method: str, path: str, body: Any = None) -> Any:
            async with session.request(method, f"{auth_url}{path}", json=body,
                                       headers={"X-Auth-Token": token}) as r:
                text = await r.text()
                if r.status >= 300:
                    raise LabError(f"Keystone {method} {path}: {r.status} {text[:300]}")
                return json.loads(text) if text else None

        project = (await call("GET", f"/projects?name={SERVICE_PROJECT}"))["projects"][0]["id"]
        role = (await call("GET", "/roles?name=service"))["roles"][0]["id"]
        for old in (await call("GET", f"/users?name={GLANCE_USER}"))["users"]:
            await call("DELETE", f"/users/{old['id']}")
        user = (await call("POST", "/users", {"user": {
            "name": GLANCE_USER, "password": password, "domain_id": "default",
            "default_project_id": project}}))["user"]["id"]
        await call("PUT", f"/projects/{project}/users/{user}/roles/{role}")
    return password


async def _ceph_client(root: Path, site: GlanceSite) -> Path:
    """Glance's cephx user on the site's cluster and a ceph.conf naming its keyring."""
    keyring = root / "ceph" / f"{site.name}.client.{CEPH_USER}.keyring"
    caps = ["mon", "profile rbd", "osd", f"profile rbd pool={site.pool}"]
    out = await _run(["ceph", "-c", str(site.ceph_conf), "auth", "get-or-create", f"client.{CEPH_USER}", *caps],
                     what=f"creating client.{CEPH_USER} on {site.name}'s cluster")
    procs.write_private(keyring, out)
    conf = root / "ceph" / f"{site.name}.conf"
    conf.write_text(_global_section(site.ceph_conf.read_text()) + f"\n[client]\nkeyring = {keyring}\n")
    return conf


def _global_section(conf: str) -> str:
    """A cluster's ceph.conf down to its [global] section: what a client node
    has (no daemon sections, no admin keyring)."""
    lines: list[str] = []
    for line in conf.splitlines():
        if line.startswith("[") and line.strip() != "[global]":
            break
        lines.append(line)
    return "\n".join(lines) + "\n"


# --- glance-api.conf, glance-manage, gunicorn ----------------------------------------


def _write_conf(root: Path, sites: list[GlanceSite], confs: dict[str, Path], *, url: str, auth_url: str,
                password: str, ca_file: Path | None) -> None:
    backends = ", ".join(f"{s.name}:rbd" for s in sites)
    stores = "".join(f"""
[{s.name}]
rbd_store_pool = {s.pool}
rbd_store_user = {CEPH_USER}
rbd_store_ceph_conf = {confs[s.name]}
rbd_thin_provisioning = True
store_description = {s.name} (rbd, cluster {s.fsid})
""" for s in sites)
    paste = venv_bin().parent / "etc" / "glance" / "glance-api-paste.ini"
    procs.write_private(root / "glance-api.conf", f"""[DEFAULT]
enabled_backends = {backends}
show_image_direct_url = True
show_multiple_locations = True
enabled_import_methods = [glance-direct,web-download,copy-image]
worker_self_reference_url = {url}
log_file = {root / 'glance-api.log'}
[glance_store]
default_backend = {sites[0].name}
{stores}
[os_glance_staging_store]
filesystem_store_datadir = {root / 'staging'}
[os_glance_tasks_store]
filesystem_store_datadir = {root / 'tasks'}
[database]
connection = sqlite:///{root / 'glance.sqlite'}
[keystone_authtoken]
www_authenticate_uri = {auth_url}
auth_url = {auth_url}
auth_type = password
username = {GLANCE_USER}
password = {password}
project_name = {SERVICE_PROJECT}
user_domain_name = {DOMAIN}
project_domain_name = {DOMAIN}
{f"cafile = {ca_file}" if ca_file else ""}
[paste_deploy]
flavor = keystone
config_file = {paste}
[wsgi]
task_pool_threads = 4
""")


async def _manage(root: Path, *args: str) -> None:
    argv = [str(venv_bin() / "glance-manage"), "--config-file", str(root / "glance-api.conf"), *args]
    await _run(argv, what=f"glance-manage {args[0]}", timeout=MANAGE_TIMEOUT_S)


def _spawn(root: Path, sock: socket.socket) -> int:
    """gunicorn serving Glance's WSGI app on `sock` (handed over by fd), detached."""
    conf = root / "gunicorn.conf.py"
    conf.write_text(
        f"bind = ['fd://{sock.fileno()}']\nworkers = 1\nthreads = 8\nworker_class = 'gthread'\n"
        "graceful_timeout = 3\ntimeout = 300\ncontrol_socket_disable = True\n"
        f"raw_env = ['OS_GLANCE_CONFIG_DIR={root}']\n")
    argv = [str(venv_bin() / "python"), str(venv_bin() / "gunicorn"), "-c", str(conf),
            "glance.wsgi.api:application"]
    sock.set_inheritable(True)
    with (root / "gunicorn.log").open("ab") as log:
        pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, log.fileno(), 2),
        ], setsid=True)
    # gunicorn retitles its master ("gunicorn: master [...]"), so the config
    # path never shows on its command line for stop()'s marker check: ask
    # waitpid whether it still runs instead.
    procs.spawned(pid)
    return pid


async def _wait_ready(lab: GlanceLab) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if procs.reap(lab.pid) or not Path(f"/proc/{lab.pid}").exists():
                raise LabError(f"Glance exited during start-up:{procs.tail(lab.root / 'gunicorn.log')}"
                               f"{procs.tail(lab.log)}")
            try:
                async with session.get(f"{lab.url}/versions", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.3)
    raise LabError(f"Glance did not answer in {READY_TIMEOUT_S:g} s:{procs.tail(lab.root / 'gunicorn.log')}")


async def _run(argv: list[str], *, what: str, timeout: float = CLI_TIMEOUT_S) -> str:
    return await procs.run_tool(argv, what=what, timeout_s=timeout)
