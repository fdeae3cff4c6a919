"""A real Keystone for `edgesync lab up --auth keystone`.

Keystone (PyPI `keystone`) lives in its own venv (`.venv-keystone`, made by
`make setup`: its pins clash with the project's), runs on SQLite with fernet
tokens under gunicorn, and is bootstrapped once per `lab up`:

- `keystone-manage db_sync`, `fernet_setup`, `credential_setup`, `bootstrap`
  (the `admin` user and project, the roles admin ⇒ member ⇒ reader, service,
  the identity endpoint in region `RegionOne`);
- then over its own API, as the admin: project `demo` with users
  `demo-member` (member) and `demo-reader` (reader); project `service` with
  the hub's service user `edgesync-hub` (service role: it may validate
  tokens) and one user per edge site `agent-SITE`, each with an application
  credential (the agent's Keystone credential; the hub maps its id to the
  site); the service users `nova` and `cinder` (service role in `service`:
  what Nova and Cinder send as `X-Service-Token` beside a user's token);
  service `image` with the hub as its public and internal endpoint.

In a TLS lab (the default) it serves HTTPS with a certificate from the lab's
CA (gunicorn's certfile/keyfile), and every client of it (the hub, the
agents, clouds.yaml's `cacert`) verifies it against that CA.

It writes `clouds.yaml` (clouds `edgesync-admin`, `edgesync-member`,
`edgesync-reader`, `edgesync-nova`, `edgesync-cinder`; lab.json's persona
`service` names Nova's) and the secrets under `secrets/`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w

from edgesync.lab import procs
from edgesync.lab.certs import LabCA
from edgesync.lab.errors import LabError
from edgesync.lab.ports import listening_socket
from edgesync.tls import TlsConfig, http_session

REGION = "RegionOne"
DOMAIN = "Default"
CLOUDS = {"admin": "edgesync-admin", "member": "edgesync-member", "reader": "edgesync-reader",
          "nova": "edgesync-nova", "cinder": "edgesync-cinder", "service": "edgesync-nova"}
# The services that call the image API for users, each a user with the service role in the service project.
SERVICE_USERS = ("nova", "cinder")
HUB_USER = "edgesync-hub"
SERVICE_PROJECT = "service"
DEMO_PROJECT = "demo"
# Lab tokens outlive any test session: lab.json hands one out as admin_token.
TOKEN_EXPIRATION_S = 12 * 3600
READY_TIMEOUT_S = 60.0
MANAGE_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0


@dataclass
class KeystoneLab:
    """What the rest of the lab needs from the lab's Keystone."""

    auth_url: str
    pid: int
    admin_token: str
    hub_password_file: Path
    clouds_yaml: Path
    # site -> (application credential id, file holding its secret)
    agent_credentials: dict[str, tuple[str, Path]] = field(default_factory=dict)
    ca_file: Path | None = None  # https: the lab CA that signed its certificate

    def info(self) -> dict[str, Any]:
        """lab.json's "keystone" entry."""
        return {"auth_url": self.auth_url, "region": REGION, "clouds_yaml": str(self.clouds_yaml),
                "clouds": dict(CLOUDS), "pid": self.pid, "config": str(_gunicorn_conf(self.root)),
                "ca_file": str(self.ca_file) if self.ca_file else None}

    @property
    def root(self) -> Path:
        return self.clouds_yaml.parent / "keystone"


def venv_bin() -> Path:
    """Where Keystone's own venv keeps its commands (EDGESYNC_KEYSTONE_VENV overrides)."""
    default = Path(__file__).resolve().parents[2] / ".venv-keystone"
    return Path(os.environ.get("EDGESYNC_KEYSTONE_VENV", default)) / "bin"


def _gunicorn_conf(root: Path) -> Path:
    return root / "gunicorn.conf.py"


async def up(directory: Path, *, edges: list[str], hub_url: str, ca: LabCA | None = None) -> KeystoneLab:
    """Bootstrap a fresh Keystone under `directory/keystone`, start it, provision
    it; with `ca`, over HTTPS with a certificate `ca` issues."""
    root = directory / "keystone"
    if not (venv_bin() / "keystone-manage").exists():
        raise LabError(f"Keystone is not installed in {venv_bin().parent} (run `make setup`)")
    root.mkdir(parents=True, exist_ok=True)
    for stale in ("keystone.sqlite3",):
        (root / stale).unlink(missing_ok=True)
    with listening_socket("127.0.0.1") as probe:
        host, port = probe.getsockname()[:2]
        auth_url = f"{'https' if ca else 'http'}://{host}:{port}/v3"
        admin_password = secrets.token_urlsafe(16)
        _write_conf(root)
        (root / "tls.json").unlink(missing_ok=True)
        if ca is not None:
            issued = ca.issue("https-keystone", hosts=(host, "localhost"))
            (root / "tls.json").write_text(json.dumps({"certfile": str(issued.cert_file),
                                                       "keyfile": str(issued.key_file)}))
        await _bootstrap(root, auth_url, admin_password)
        pid = await _spawn(root, probe)
    ca_file = ca.ca_file if ca else None
    try:
        await _wait_ready(auth_url, pid, root, ca_file)
        secrets_dir = directory / "secrets"
        secrets_dir.mkdir(exist_ok=True, mode=0o700)
        async with _Admin(auth_url, admin_password, ca_file) as admin:
            ks = await _provision(admin, directory, secrets_dir, auth_url, pid, admin_password, edges, hub_url)
        ks.ca_file = ca_file
        procs.write_private(ks.clouds_yaml, _with_cacert(ks.clouds_yaml.read_text(), ca_file))
        return ks
    except BaseException:  # not yet in lab.json: `down` would not find it
        await procs.stop(pid, _gunicorn_conf(root), timeout_s=STOP_TIMEOUT_S)
        raise


async def start(directory: Path, info: dict[str, Any]) -> int:
    """Start the lab's Keystone again on its recorded port (its database and keys are kept)."""
    root = directory / "keystone"
    if procs.is_ours(info.get("pid"), _gunicorn_conf(root)):
        return int(info["pid"])
    port = int(info["auth_url"].rsplit(":", 1)[1].split("/")[0])
    with listening_socket("127.0.0.1", port) as sock:
        pid = await _spawn(root, sock)
    await _wait_ready(info["auth_url"], pid, root, Path(info["ca_file"]) if info.get("ca_file") else None)
    return pid


async def stop(directory: Path, info: dict[str, Any]) -> None:
    await procs.stop(info.get("pid"), _gunicorn_conf(directory / "keystone"), timeout_s=STOP_TIMEOUT_S)


# --- files and keystone-manage -------------------------------------------------------


def _write_conf(root: Path) -> None:
    (root / "keystone.conf").write_text(f"""[DEFAULT]
log_file = {root / 'keystone.log'}
[database]
connection = sqlite:///{root / 'keystone.sqlite3'}
[token]
provider = fernet
expiration = {TOKEN_EXPIRATION_S}
[fernet_tokens]
key_repository = {root / 'fernet-keys'}
[credential]
key_repository = {root / 'credential-keys'}
[oslo_policy]
enforce_new_defaults = true
enforce_scope = false
""")


async def _manage(root: Path, *args: str) -> None:
    argv = [str(venv_bin() / "keystone-manage"), "--config-file", str(root / "keystone.conf"), *args]
    await procs.run_tool(argv, what=f"keystone-manage {args[0]}", timeout_s=MANAGE_TIMEOUT_S)


async def _bootstrap(root: Path, auth_url: str, admin_password: str) -> None:
    await _manage(root, "db_sync")
    user = ["--keystone-user", str(os.getuid()), "--keystone-group", str(os.getgid())]
    await asyncio.gather(_manage(root, "fernet_setup", *user), _manage(root, "credential_setup", *user))
    await _manage(root, "bootstrap", "--bootstrap-password", admin_password,
                  "--bootstrap-admin-url", auth_url, "--bootstrap-public-url", auth_url,
                  "--bootstrap-internal-url", auth_url, "--bootstrap-region-id", REGION)


# --- the server ----------------------------------------------------------------------


async def _spawn(root: Path, sock: socket.socket) -> int:
    """gunicorn serving Keystone's WSGI app on `sock` (handed over by fd), detached."""
    conf = _gunicorn_conf(root)
    # Keystone's oslo.config reads the process's argv, where gunicorn's own
    # options would be refused: the app is loaded with argv emptied.
    (root / "keystone_app.py").write_text(
        "import sys\nsys.argv = sys.argv[:1]\nfrom keystone.server import wsgi\n"
        "application = wsgi.initialize_public_application()\n")
    conf.write_text(
        f"bind = ['fd://{sock.fileno()}']\nworkers = 1\nthreads = 4\nworker_class = 'gthread'\n"
        f"graceful_timeout = 3\ntimeout = 60\npythonpath = {str(root)!r}\n"
        "control_socket_disable = True\n"  # gunicorn ≥ 24 would open one in ~/.gunicorn
        f"raw_env = ['OS_KEYSTONE_CONFIG_FILES={root / 'keystone.conf'}']\n"
        + _gunicorn_tls(root))
    argv = [str(venv_bin() / "python"), str(venv_bin() / "gunicorn"), "-c", str(conf), "keystone_app:application"]
    sock.set_inheritable(True)
    with (root / "gunicorn.log").open("ab") as log:
        pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, log.fileno(), 2),
        ], setsid=True)
    return pid


def _gunicorn_tls(root: Path) -> str:
    """gunicorn's HTTPS settings, in a TLS lab (`up` wrote tls.json)."""
    if not (root / "tls.json").exists():
        return ""
    tls = json.loads((root / "tls.json").read_text())
    return f"certfile = {tls['certfile']!r}\nkeyfile = {tls['keyfile']!r}\n"


def _session(ca_file: Path | None, **kwargs: Any) -> aiohttp.ClientSession:
    """An HTTP client for Keystone: https:// verified against the lab's CA."""
    return http_session(TlsConfig(ca_file=ca_file), **kwargs)


def _with_cacert(clouds_yaml: str, ca_file: Path | None) -> str:
    """clouds.yaml with `cacert` in every cloud: the clients verify Keystone and the hub with it."""
    clouds = json.loads(clouds_yaml)
    for cloud in clouds["clouds"].values():
        if ca_file is not None:
            cloud["cacert"] = str(ca_file)
    return json.dumps(clouds, indent=2) + "\n"


async def _wait_ready(auth_url: str, pid: int, root: Path, ca_file: Path | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with _session(ca_file) as session:
        while time.monotonic() < deadline:
            if procs.reap(pid) or not Path(f"/proc/{pid}").exists():
                raise LabError(f"Keystone exited during start-up:{procs.tail(root / 'gunicorn.log')}")
            try:
                async with session.get(auth_url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.2)
    raise LabError(f"Keystone did not answer in {READY_TIMEOUT_S:g} s:{procs.tail(root / 'gunicorn.log')}")


# --- provisioning over Keystone's API --------------------------------------------------


class _Admin:
    """Keystone's v3 API as the bootstrap admin (lab set-up only: the hub validates through keystoneauth1)."""

    def __init__(self, auth_url: str, password: str, ca_file: Path | None) -> None:
        self.auth_url, self.password = auth_url, password
        self.session = _session(ca_file, timeout=aiohttp.ClientTimeout(total=30))
        self.token = ""

    async def __aenter__(self) -> _Admin:
        self.token = await password_token(self.session, self.auth_url, "admin", self.password, "admin")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        async with self.session.request(method, f"{self.auth_url}{path}", json=body,
                                        headers={"X-Auth-Token": token or self.token}) as r:
            text = await r.text()
            if r.status >= 300:
                raise LabError(f"Keystone {method} {path}: {r.status} {text[:500]}")
            return json.loads(text) if text else None

    async def create(self, kind: str, **fields: Any) -> str:
        body = await self.call("POST", f"/{kind}s", {kind: fields})
        return str(body[kind]["id"])

    async def role_id(self, name: str) -> str:
        body = await self.call("GET", f"/roles?name={name}")
        return str(body["roles"][0]["id"])

    async def grant(self, project: str, user: str, role: str) -> None:
        await self.call("PUT", f"/projects/{project}/users/{user}/roles/{role}")


async def password_token(session: aiohttp.ClientSession, auth_url: str, user: str, password: str,
                         project: str) -> str:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": DOMAIN}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": DOMAIN}}}}}
    async with session.post(f"{auth_url}/auth/tokens", json=body) as r:
        if r.status != 201:
            raise LabError(f"Keystone refused {user}'s password: {r.status} {(await r.text())[:300]}")
        return r.headers["X-Subject-Token"]


async def _provision(admin: _Admin, directory: Path, secrets_dir: Path, auth_url: str, pid: int,
                     admin_password: str, edges: list[str], hub_url: str) -> KeystoneLab:
    roles = {name: await admin.role_id(name) for name in ("admin", "member", "reader", "service")}
    demo = await admin.create("project", name=DEMO_PROJECT, domain_id="default")
    service = await admin.create("project", name=SERVICE_PROJECT, domain_id="default")
    passwords = {"admin": admin_password}

    async def user(name: str, project: str, role: str) -> str:
        passwords[name] = secrets.token_urlsafe(16)
        user_id = await admin.create("user", name=name, password=passwords[name], domain_id="default",
                                     default_project_id=project)
        await admin.grant(project, user_id, roles[role])
        return user_id

    await user("demo-member", demo, "member")
    await user("demo-reader", demo, "reader")
    await user(HUB_USER, service, "service")
    for name in SERVICE_USERS:
        await user(name, service, "service")
    image = await admin.create("service", type="image", name="glance", description="edgesync hub")
    for interface in ("public", "internal"):
        await admin.create("endpoint", service_id=image, interface=interface, url=hub_url, region_id=REGION)
    credentials = {}
    for site in edges:
        agent_id = await user(f"agent-{site}", service, "reader")
        agent_token = await password_token(admin.session, auth_url, f"agent-{site}", passwords[f"agent-{site}"],
                                           SERVICE_PROJECT)
        secret = secrets.token_urlsafe(24)
        body = await admin.call("POST", f"/users/{agent_id}/application_credentials", {
            "application_credential": {"name": f"edgesync-agent-{site}", "secret": secret}}, token=agent_token)
        secret_file = secrets_dir / f"{site}.appcred"
        procs.write_private(secret_file, secret + "\n")
        credentials[site] = (str(body["application_credential"]["id"]), secret_file)
    hub_password = secrets_dir / "keystone-hub.password"
    procs.write_private(hub_password, passwords[HUB_USER] + "\n")
    clouds = directory / "clouds.yaml"
    procs.write_private(clouds, _clouds_yaml(auth_url, passwords))
    return KeystoneLab(auth_url=auth_url, pid=pid, admin_token=admin.token, hub_password_file=hub_password,
                       clouds_yaml=clouds, agent_credentials=credentials)


def _clouds_yaml(auth_url: str, passwords: dict[str, str]) -> str:
    """clouds.yaml (JSON is YAML): one cloud per persona, password auth, the catalog for endpoints."""
    users = {"admin": ("admin", "admin"), "member": ("demo-member", DEMO_PROJECT),
             "reader": ("demo-reader", DEMO_PROJECT), **{name: (name, SERVICE_PROJECT) for name in SERVICE_USERS}}
    clouds = {CLOUDS[persona]: {
        "auth": {"auth_url": auth_url, "username": user, "password": passwords[user], "project_name": project,
                 "user_domain_name": DOMAIN, "project_domain_name": DOMAIN},
        "region_name": REGION, "interface": "public", "identity_api_version": 3,
    } for persona, (user, project) in users.items()}
    return json.dumps({"clouds": clouds}, indent=2) + "\n"


# --- the lab's other files, pointed at Keystone ----------------------------------------

# The lab's bound on how late a revoked token is still accepted (the tests wait it out).
LAB_CACHE_TTL_S = 5.0


def configure(ks: KeystoneLab, hub_config: Path, site_files: dict[str, Path]) -> None:
    """hub.toml gets auth = "keystone" and its [keystone] table (the agents'
    application credential ids mapped to their sites); each edge site file's
    [agent] table gets the agent's [agent.keystone] credential."""
    hub = tomllib.loads(hub_config.read_text())
    hub["hub"]["auth"] = "keystone"
    hub["keystone"] = {"auth_url": ks.auth_url, "username": HUB_USER, "password_file": str(ks.hub_password_file),
                       "project_name": SERVICE_PROJECT, "cache_ttl_s": LAB_CACHE_TTL_S,
                       "agents": {site: cred_id for site, (cred_id, _) in ks.agent_credentials.items()},
                       **_ca(ks)}
    hub_config.write_text(tomli_w.dumps(hub))
    for site, (cred_id, secret_file) in ks.agent_credentials.items():
        path = site_files[site]
        data = tomllib.loads(path.read_text())
        data["agent"]["keystone"] = {"auth_url": ks.auth_url, "application_credential_id": cred_id,
                                     "application_credential_secret_file": str(secret_file), **_ca(ks)}
        path.write_text(tomli_w.dumps(data))


def _ca(ks: KeystoneLab) -> dict[str, str]:
    return {"ca_file": str(ks.ca_file)} if ks.ca_file else {}


async def user_token(ks: KeystoneLab, persona: str) -> str:
    """A token for one of clouds.yaml's personas (lab.json's admin_token and member_token)."""
    auth = json.loads(ks.clouds_yaml.read_text())["clouds"][CLOUDS[persona]]["auth"]
    async with _session(ks.ca_file, timeout=aiohttp.ClientTimeout(total=30)) as session:
        return await password_token(session, ks.auth_url, auth["username"], auth["password"], auth["project_name"])
