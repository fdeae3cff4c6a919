"""The lab's Mosquitto: one private broker with an identity per site and an ACL.

Identities. Over TLS (`up(..., ca=LabCA)`, what the lab does by default)
each identity is a client certificate the lab CA issued, with the identity as
its CN: the listener requires a certificate (`require_certificate`), takes
its CN as the user name (`use_identity_as_username`, no password at all) and
as the client id (`use_username_as_clientid`). So whatever client id a client
asks for, it gets its own CN: one site's certificate can't take over the
hub's session (`hub`) or another site's (`site-<name>`), nor wipe what is
queued there with a clean start; the worst it can do is replace its own
connection. (Mosquitto 2.0 skips its password and plugin checks, the dynamic
security plugin's client-id binding included, for certificate identities;
this rule is the one that holds.) One identity is one connection: a second
process needs an identity of its own (`add_identity`, same rights).
Without a CA the broker takes passwords on a plaintext listener, and any
user can take over any client id: the lab's `--plaintext` only.

Everything lives in `base_dir`:

    base_dir/mosquitto.conf     listener <host>:<port>, no anonymous access
    base_dir/passwd             plaintext only: hashed by `mosquitto_passwd -U`
    base_dir/acl                `hub` → edgesync/#; `site-<name>` → its own topics
    base_dir/data/              persistence (sessions, queued and retained messages)
    base_dir/mosquitto.pid, base_dir/mosquitto.log
    base_dir/broker.json        `BrokerInfo.to_json()`, passwords included (0600)
    <CA dir>/mosquitto.crt|key  TLS: the broker's server certificate, and
    <CA dir>/<identity>.crt|key each identity's client certificate

`up()` is idempotent: a running broker with the same users is reused
untouched; a stopped one is started again on its recorded port with its
recorded passwords and persistence, so sessions and queued messages survive.
The broker runs detached (`mosquitto -d`) and is stopped by pid.

The ACL comes from `edgesync.bus.topics`, so topics and permissions can't
drift apart. Mosquitto's denials are silent (a denied subscribe delivers
nothing; a denied publish is dropped), so tests check them by delivery.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgesync.bus import topics
from edgesync.lab import ports, procs
from edgesync.lab.certs import LabCA
from edgesync.lab.errors import LabError
from edgesync.tls import TLS12_CIPHERS

HOST = "127.0.0.1"
STATE_FILE = "broker.json"
MQTT_PORT = 1883
START_ATTEMPTS = 3
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 10.0
SERVER_CERT = "mosquitto"  # the broker's own certificate, in the CA's directory
POLL_INTERVAL_S = 0.05
# Mosquitto's default is 1000 queued messages per offline session, after which
# it silently drops; a site down for a while can owe the hub more than that.
MAX_QUEUED_MESSAGES = 100_000
_USER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # lands in the ACL and password files


def site_user(site: str) -> str:
    """The broker user a site's agent connects as."""
    return f"site-{topics.check_site(site)}"


def _check_user(user: str) -> str:
    if not _USER_NAME.fullmatch(user) or user.startswith("site-"):
        raise LabError(f"invalid broker user name {user!r}: use ASCII letters, digits, '-' or '_', "
                       "not starting with 'site-'")
    return user


@dataclass(frozen=True)
class BrokerInfo:
    host: str
    port: int
    pid: int | None
    users: dict[str, str]  # user name → password
    conf: Path
    hub_user: str = "hub"
    netns: str | None = None  # the network namespace it runs in (the WAN lab), or the machine's
    # TLS: the CA bundle that verifies the broker and every identity (None: plaintext,
    # passwords), its digest (a CA made again at the same path is another CA), and
    # the identities added since `up` (identity → the user whose rights it has).
    ca_file: Path | None = None
    ca_sha256: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.conf.parent

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    def password(self, user: str) -> str:
        if self.tls:
            raise LabError("the lab broker takes certificates, not passwords: use identity()")
        try:
            return self.users[user]
        except KeyError:
            raise LabError(f"the lab broker has no user {user!r}") from None

    def identity(self, user: str) -> tuple[Path, Path]:
        """The client certificate and key of identity `user` (TLS only)."""
        if self.ca_file is None:
            raise LabError("the lab broker is plaintext: it takes passwords, not certificates")
        if user not in self.users and user not in self.aliases:
            raise LabError(f"the lab broker has no identity {user!r}")
        return self.ca_file.parent / f"{user}.crt", self.ca_file.parent / f"{user}.key"

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "pid": self.pid, "users": dict(self.users),
                "conf": str(self.conf), "hub_user": self.hub_user, "netns": self.netns,
                "ca_file": str(self.ca_file) if self.ca_file else None, "ca_sha256": self.ca_sha256,
                "aliases": dict(self.aliases)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BrokerInfo:
        return cls(host=data["host"], port=int(data["port"]), pid=data.get("pid"),
                   users=dict(data["users"]), conf=Path(data["conf"]),
                   hub_user=data.get("hub_user", "hub"), netns=data.get("netns"),
                   ca_file=Path(data["ca_file"]) if data.get("ca_file") else None,
                   ca_sha256=data.get("ca_sha256"), aliases=dict(data.get("aliases", {})))


# --- public API ----------------------------------------------------------------


async def up(base_dir: Path, sites: list[str], hub_user: str = "hub", *,
             netns: str | None = None, host: str = HOST, ca: LabCA | None = None) -> BrokerInfo:
    """Start (or reuse) the lab broker with identities `hub_user` and
    `site-<site>`: with `ca`, a TLS listener and a client certificate from `ca`
    for each (see the module docstring); without, plaintext and passwords.
    With `netns`, in that network namespace on `host`, on MQTT's own port
    (nobody else binds ports in a namespace the lab made)."""
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    wanted = [_check_user(hub_user), *(site_user(s) for s in sites)]
    old = load(base_dir)
    running = old is not None and procs.is_ours(old.pid, old.conf)
    if ca is not None:
        users = dict.fromkeys(wanted, "")  # certificates, no passwords
    else:
        users = {u: (old.users.get(u) if old else None) or secrets.token_urlsafe(18) for u in wanted}
    ca_file, ca_sha256 = (ca.ca_file, _digest(ca.ca_file)) if ca is not None else (None, None)
    if (running and old is not None and old.users == users and old.hub_user == hub_user
            and (old.ca_file, old.ca_sha256) == (ca_file, ca_sha256)):
        return old
    if old is not None:
        # The users changed (restart on the new files), or a broker whose
        # state was never saved may still hold the port: stop what is ours.
        await _stop(old)
    port = old.port if old else (MQTT_PORT if netns else _pick_port())
    info = BrokerInfo(host=host if netns else HOST, port=port, pid=None, users=users,
                      conf=base_dir / "mosquitto.conf", hub_user=hub_user, netns=netns,
                      ca_file=ca_file, ca_sha256=ca_sha256)
    await _write_files(info, sites, ca)
    return await _start(info, may_move_port=netns is None)


async def add_identity(base_dir: Path, name: str, *, like: str) -> tuple[Path, Path]:
    """A new TLS identity `name` with the rights of identity `like` (the hub's
    or a site's): its client certificate and key from the broker's CA, a block
    in the ACL, and the running broker told to reload it. For a second
    connection with those rights (a tool, a test) beside the daemon holding
    `like`'s own, which it would otherwise replace. Kept until the next `up`
    that changes the identities."""
    base_dir = Path(base_dir).resolve()
    info = load(base_dir)
    if info is None or info.ca_file is None:
        raise LabError(f"no TLS broker in {base_dir}")
    if _check_user(name) in info.users or name in info.aliases or name == SERVER_CERT:
        raise LabError(f"the lab broker already has an identity {name!r}")
    if like not in info.users:
        raise LabError(f"the lab broker has no identity {like!r} to copy the rights of")
    LabCA.load(info.ca_file.parent).issue(name, client=True)
    info = replace(info, aliases={**info.aliases, name: like})
    procs.write_private(info.dir / "acl", _render_acl(info.hub_user, _sites_of(info), info.aliases))
    _save(info)
    if procs.is_ours(info.pid, info.conf):
        await _reload(info)
    return info.identity(name)


async def down(base_dir: Path) -> None:
    """Stop the broker (it saves its persistence on the way out). Idempotent."""
    info = load(Path(base_dir).resolve())
    if info is None:
        return
    await _stop(info)
    _save(replace(info, pid=None))


async def start(base_dir: Path) -> BrokerInfo:
    """Start a stopped broker again on its port, config and persistence
    (a running one is left alone)."""
    info = load(Path(base_dir).resolve())
    if info is None:
        raise LabError(f"no broker in {base_dir} (call up() first)")
    if procs.is_ours(info.pid, info.conf):
        return info
    return await _start(replace(info, pid=None), may_move_port=False)


async def restart(base_dir: Path) -> BrokerInfo:
    """Stop and start the broker on the same port, config and persistence."""
    info = load(Path(base_dir).resolve())
    if info is None:
        raise LabError(f"no broker in {base_dir} (call up() first)")
    await _stop(info)
    return await _start(replace(info, pid=None), may_move_port=False)


def load(base_dir: Path) -> BrokerInfo | None:
    """The broker recorded in `base_dir` (running or not), or None."""
    path = Path(base_dir) / STATE_FILE
    if not path.exists():
        return None
    return BrokerInfo.from_json(json.loads(path.read_text()))


def is_running(base_dir: Path) -> bool:
    info = load(Path(base_dir).resolve())
    return info is not None and procs.is_ours(info.pid, info.conf)


# --- files ---------------------------------------------------------------------


async def _write_files(info: BrokerInfo, sites: list[str], ca: LabCA | None) -> None:
    base = info.dir
    (base / "data").mkdir(exist_ok=True)
    if ca is None:
        procs.write_private(base / "passwd", "".join(f"{u}:{p}\n" for u, p in info.users.items()))
        await _hash_passwords(base / "passwd")
    else:
        (base / "passwd").unlink(missing_ok=True)
        ca.issue(SERVER_CERT, hosts=(info.host,))
        for user in info.users:
            ca.issue(user, client=True)
    procs.write_private(base / "acl", _render_acl(info.hub_user, sites, info.aliases))
    info.conf.write_text(_render_conf(info))


def _render_conf(info: BrokerInfo) -> str:
    base = info.dir
    lines = [
        f"listener {info.port} {info.host}",
        "allow_anonymous false",
        *(_tls_lines(info.ca_file) if info.ca_file else [f"password_file {base / 'passwd'}"]),
        f"acl_file {base / 'acl'}",
        "persistence true",
        f"persistence_location {base / 'data'}/",  # mosquitto wants the trailing slash
        "autosave_interval 1",  # a crash loses at most a second of queued messages
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        "set_tcp_nodelay true",
        f"pid_file {base / 'mosquitto.pid'}",
        f"log_dest file {base / 'mosquitto.log'}",
        "log_type error", "log_type warning", "log_type notice", "log_type information",
        "connection_messages true",
    ]
    if os.geteuid() == 0:
        # Otherwise it drops to user `mosquitto`, which can't write our files.
        lines.append("user root")
    return "\n".join(lines) + "\n"


def _tls_lines(ca_file: Path) -> list[str]:
    certs = ca_file.parent
    return [
        f"cafile {ca_file}", f"certfile {certs / SERVER_CERT}.crt", f"keyfile {certs / SERVER_CERT}.key",
        "tls_version tlsv1.2",  # the minimum, as edgesync.tls's policy; and its TLS 1.2 ciphers
        f"ciphers {TLS12_CIPHERS}",
        "require_certificate true",  # no certificate from the CA, no connection
        "use_identity_as_username true",  # the certificate's CN is the user the ACL knows
        "use_username_as_clientid true",  # ... and the client id: none can be taken over
    ]


def _render_acl(hub_user: str, sites: list[str], aliases: dict[str, str]) -> str:
    rules = {hub_user: topics.hub_acl(), **{site_user(s): topics.site_acl(s) for s in sites}}
    blocks = [_acl_block(user, rule) for user, rule in rules.items()]
    blocks += [_acl_block(alias, rules[like]) for alias, like in aliases.items()]
    return "\n".join(blocks)


def _sites_of(info: BrokerInfo) -> list[str]:
    return [user.removeprefix("site-") for user in info.users if user.startswith("site-")]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _acl_block(user: str, rules: list[tuple[str, str]]) -> str:
    return f"user {user}\n" + "".join(f"topic {access} {topic}\n" for access, topic in rules)


async def _hash_passwords(path: Path) -> None:
    """Replace the plain `user:password` lines with mosquitto's salted hashes."""
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_passwd", "-U", str(path),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        raise LabError(f"mosquitto_passwd -U {path} failed: {output.decode(errors='replace').strip()}")


def _save(info: BrokerInfo) -> None:
    procs.write_private(info.dir / STATE_FILE, json.dumps(info.to_json(), indent=2) + "\n")


# --- process -------------------------------------------------------------------


async def _start(info: BrokerInfo, *, may_move_port: bool) -> BrokerInfo:
    """Start mosquitto for `info` and wait until it accepts connections.

    A fresh start may move to another port if the recorded one is taken; a
    restart may not, since clients are waiting to reconnect to that port.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            pid = await _spawn_and_wait(info)
        except _PortTaken:
            if not may_move_port or attempt == START_ATTEMPTS:
                raise LabError(f"port {info.port} is taken; the broker can't listen there") from None
            info = replace(info, port=_pick_port())
            info.conf.write_text(_render_conf(info))
            continue
        info = replace(info, pid=pid)
        _save(info)
        return info
    raise AssertionError("unreachable")


class _PortTaken(Exception):
    pass


async def _spawn_and_wait(info: BrokerInfo) -> int:
    pid_file = info.dir / "mosquitto.pid"
    log = info.dir / "mosquitto.log"
    pid_file.unlink(missing_ok=True)
    log_offset = log.stat().st_size if log.exists() else 0
    # -d: mosquitto forks into its own session and the parent exits at once;
    # config errors still come back on stderr with a non-zero status.
    proc = await asyncio.create_subprocess_exec(
        *(["ip", "netns", "exec", info.netns] if info.netns else []), "mosquitto", "-c", str(info.conf), "-d",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True,
    )
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        raise LabError(f"mosquitto did not start: {output.decode(errors='replace').strip()}")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        new_log = _read_from(log, log_offset)
        if "Address already in use" in new_log:
            await _stop_pid(_read_pid(pid_file), info.conf)
            raise _PortTaken()
        pid = _read_pid(pid_file)
        alive = pid is not None and procs.is_ours(pid, info.conf)
        # "… running" is logged once the listeners are open; and the listening
        # socket must be its own, not whatever else held the port.
        if pid is not None and alive and " running" in new_log and procs.listens_on(pid, info.port):
            return pid
        if not alive and "Error" in new_log:
            break  # it died saying why (the pid file may never have been written)
        await asyncio.sleep(POLL_INTERVAL_S)
    await _stop_pid(_read_pid(pid_file), info.conf)
    raise LabError(f"mosquitto did not come up on {info.host}:{info.port}; its log says:\n"
                   f"{_read_from(log, log_offset)[-3000:]}")


async def _reload(info: BrokerInfo) -> None:
    """SIGHUP: mosquitto rereads its ACL. It logs "Reloading config." and reloads
    in the same turn of its (single-threaded) loop, so a connection made after
    the line is there is judged by the new ACL."""
    log = info.dir / "mosquitto.log"
    offset = log.stat().st_size if log.exists() else 0
    assert info.pid is not None
    os.kill(info.pid, signal.SIGHUP)
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    while "Reloading config" not in _read_from(log, offset):
        if time.monotonic() > deadline:
            raise LabError(f"mosquitto (pid {info.pid}) did not reload its config; its log says:\n"
                           f"{_read_from(log, offset)[-3000:]}")
        await asyncio.sleep(POLL_INTERVAL_S)


async def _stop(info: BrokerInfo) -> None:
    await _stop_pid(info.pid, info.conf)
    # A broker started by another `up` whose state file wasn't saved (crash):
    # its pid file still names it.
    await _stop_pid(_read_pid(info.dir / "mosquitto.pid"), info.conf)


async def _stop_pid(pid: int | None, conf: Path) -> None:
    """SIGTERM (mosquitto saves its persistence), wait, then SIGKILL."""
    await procs.stop(pid, conf, timeout_s=STOP_TIMEOUT_S)


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _pick_port() -> int:
    return ports.pick_free(HOST, 1)[0]
