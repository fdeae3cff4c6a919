"""Real Ceph clusters for the lab and the tests: one small cluster per site.

Each site gets a single-mon, single-OSD cluster in `base_dir/<site>/`, with its
own fsid, its own `ceph.conf`, cephx, bluestore on a sparse file, and the RBD
pool `images`. No systemd, no cephadm, no mgr: the daemons are started
directly and stopped by pid. `up()` bootstraps all sites in parallel (about
6 s for three here) and is idempotent: a cluster whose daemons are running is
reused untouched, one whose daemons died is restarted on its recorded ports.

Layout of a cluster directory B:

    B/ceph.conf                      clients need only `-c B/ceph.conf`
    B/ceph.client.admin.keyring      admin key (CLI, tests)
    B/ceph.client.edgesync-<site>.keyring   the store's least-privilege key
    B/cluster.json                   `CephCluster.to_json()`; written last, so
                                     its presence means "bootstrap finished"
    B/mon/, B/osd/                   daemon data (bluestore block is sparse)
    B/run/<daemon>.pid, B/log/       pid files, logs

The module only drives the Ceph command line tools (the one module allowed to
import the rados/rbd bindings is `edgesync.stores.rbd`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from collections.abc import Coroutine
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgesync.config import StoreConfig
from edgesync.lab import ports, procs
from edgesync.lab.ceph_files import HOST, MON_ID, OSD_ID, render_conf, write_keyrings
from edgesync.lab.errors import LabError

POOL = "images"
STATE_FILE = "cluster.json"
CLI_TIMEOUT_S = 30.0
OSD_UP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
MON_BIND_ATTEMPTS = 3
MON_PORTS = (3300, 6789)  # Ceph's own (msgr2, msgr1): for a cluster in a namespace of its own


class Place(Protocol):
    """Where a site's daemons run in the WAN lab: its namespace and address there."""

    @property
    def netns(self) -> str: ...
    @property
    def address(self) -> str: ...


class MonPortTaken(LabError):
    """The mon's port was taken by another process before the mon could bind it."""


@dataclass(frozen=True)
class CephCluster:
    site: str
    dir: Path
    conf: Path
    fsid: str
    user: str  # rados client name without "client.", e.g. "edgesync-dcn0"
    keyring: Path
    admin_keyring: Path
    mon_addr: str  # HOST:PORT of the mon's msgr2 endpoint
    mon_addr_v1: str  # HOST:PORT of its legacy msgr1 endpoint
    pool: str = POOL
    netns: str | None = None  # the network namespace its daemons run in (the WAN lab), or the machine's

    @property
    def host(self) -> str:
        """The address its daemons bind (and its ceph.conf names)."""
        return self.mon_addr.rsplit(":", 1)[0]

    @property
    def exec_prefix(self) -> list[str]:
        """What runs a command in the cluster's network namespace (nothing outside a WAN lab)."""
        return netns_exec(self.netns)

    @property
    def cli_args(self) -> list[str]:
        """Arguments that make `ceph`/`rbd`/`rados` talk to this cluster as admin."""
        return ["-c", str(self.conf)]

    def store_config(self, *, connect_timeout_s: float = 10.0) -> StoreConfig:
        """The `[store]` config of an rbd store on this cluster, as the site's user."""
        return StoreConfig(
            type="rbd", description=f"{self.site} (rbd)", ceph_conf=self.conf,
            pool=self.pool, user=self.user, keyring=self.keyring,
            connect_timeout_s=connect_timeout_s,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site, "dir": str(self.dir), "conf": str(self.conf),
            "fsid": self.fsid, "pool": self.pool, "user": self.user,
            "keyring": str(self.keyring), "admin_keyring": str(self.admin_keyring),
            "mon_addr": self.mon_addr, "mon_addr_v1": self.mon_addr_v1, "netns": self.netns,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CephCluster:
        paths = ("dir", "conf", "keyring", "admin_keyring")
        fields: dict[str, Any] = {k: Path(v) if k in paths else v for k, v in data.items()}
        return cls(**fields)


# --- public API ----------------------------------------------------------------


def netns_exec(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


async def up(base_dir: Path, sites: list[str], *, netns: dict[str, Place] | None = None) -> dict[str, CephCluster]:
    """Bring up (or reuse) one cluster per site under `base_dir`, in parallel.

    With `netns`, a site listed there gets its cluster in that network
    namespace, bound to that address, on Ceph's own ports (nobody else binds
    ports in a namespace the lab made); the others get 127.0.0.1 and ports
    picked from the lab's range.
    """
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    for site in sites:
        _check_site_name(site)
    places = netns or {}
    fresh = [s for s in sites if _load_state(base_dir / s) is None and s not in places]
    picked = ports.pick_free(HOST, 2 * len(fresh))
    mon_ports = {site: (picked[2 * i], picked[2 * i + 1]) for i, site in enumerate(fresh)}
    mon_ports.update(dict.fromkeys(places, MON_PORTS))
    results = await asyncio.gather(
        *(_up_one(base_dir / site, site, mon_ports.get(site), places.get(site)) for site in sites),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        # Every failed site already stopped its own daemons; surface the first.
        raise failures[0]
    clusters = [r for r in results if not isinstance(r, BaseException)]
    return dict(zip(sites, clusters, strict=True))


async def down(base_dir: Path) -> None:
    """Stop every cluster under `base_dir`: OSDs first, then mons. Idempotent."""
    base_dir = Path(base_dir).resolve()
    if not base_dir.is_dir():
        return
    cluster_dirs = sorted(p.parent.parent for p in base_dir.glob("*/run/*.pid"))
    await asyncio.gather(*(_stop_cluster(d) for d in set(cluster_dirs)))


def load(base_dir: Path) -> dict[str, CephCluster]:
    """The clusters whose bootstrap finished under `base_dir` (running or not)."""
    found = (_load_state(p.parent) for p in sorted(Path(base_dir).glob(f"*/{STATE_FILE}")))
    return {c.site: c for c in found if c is not None}


def is_running(cluster_dir: Path) -> bool:
    """Whether both daemons of the cluster in `cluster_dir` are alive."""
    alive = _alive_daemons(Path(cluster_dir))
    return f"mon.{MON_ID}" in alive and f"osd.{OSD_ID}" in alive


# --- one site ------------------------------------------------------------------


async def _up_one(cdir: Path, site: str, mon_ports: tuple[int, int] | None, place: Place | None) -> CephCluster:
    cluster = _load_state(cdir)
    if cluster is not None:
        if not is_running(cdir):
            await _restart(cluster)
        return cluster
    assert mon_ports is not None
    for attempt in range(1, MON_BIND_ATTEMPTS + 1):
        try:
            return await _bootstrap(cdir, site, mon_ports, place)
        except MonPortTaken:
            # Free when picked, taken before the mon bound it: again on other ports.
            await _stop_cluster(cdir)
            if attempt == MON_BIND_ATTEMPTS or place is not None:
                raise
            v2, v1 = ports.pick_free(HOST, 2)
            mon_ports = (v2, v1)
        except BaseException:
            await _stop_cluster(cdir)
            raise
    raise AssertionError("unreachable")


async def _bootstrap(cdir: Path, site: str, mon_ports: tuple[int, int], place: Place | None) -> CephCluster:
    await _stop_cluster(cdir)  # leftovers of an interrupted bootstrap
    if cdir.exists():
        await asyncio.to_thread(shutil.rmtree, cdir)
    for sub in ("mon", "osd", "run", "log"):
        (cdir / sub).mkdir(parents=True)
    v2, v1 = mon_ports
    host = place.address if place else HOST
    user = f"edgesync-{site}"
    cluster = CephCluster(
        site=site, dir=cdir, conf=cdir / "ceph.conf", fsid=str(uuid.uuid4()), user=user,
        keyring=cdir / f"ceph.client.{user}.keyring",
        admin_keyring=cdir / "ceph.client.admin.keyring",
        mon_addr=f"{host}:{v2}", mon_addr_v1=f"{host}:{v1}", netns=place.netns if place else None,
    )
    cluster.conf.write_text(render_conf(cluster))
    osd_uuid = str(uuid.uuid4())
    osd_key = write_keyrings(cluster)
    await _make_mon(cluster)
    # The OSD's mkfs is offline (--no-mon-config) and the slowest step, so it
    # runs while the mon starts and takes the first commands.
    await _together(_make_osd(cluster, osd_uuid), _start_mon_and_configure(cluster, osd_uuid, osd_key))
    await _start_daemon(cluster, "osd")
    await _wait_osd_up(cluster)
    await _ceph(cluster, "osd", "pool", "create", cluster.pool, "8", "8")
    await _run([*cluster.exec_prefix, "rbd", *cluster.cli_args, "pool", "init", cluster.pool],
               what=f"{site}: rbd pool init")
    _save_state(cluster)
    return cluster


async def _start_mon_and_configure(cluster: CephCluster, osd_uuid: str, osd_key: str) -> None:
    await _start_daemon(cluster, "mon")
    secret = json.dumps({"cephx_secret": osd_key}).encode()
    await _ceph(cluster, "osd", "new", osd_uuid, str(OSD_ID), "-i", "-", stdin=secret)
    await _together(
        # Clone v2: COW clones of snapshots without requiring protection,
        # and trash-aware snapshot removal.
        _ceph(cluster, "osd", "set-require-min-compat-client", "mimic"),
        _ceph(
            cluster, "auth", "get-or-create", f"client.{cluster.user}",
            "mon", "profile rbd", "osd", f"profile rbd pool={cluster.pool}",
            "-o", str(cluster.keyring),
        ),
    )


async def _together(*steps: Coroutine[Any, Any, Any]) -> None:
    """Run bootstrap steps concurrently; the first failure cancels the others
    (unlike gather, so no step outlives the cleanup) and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for step in steps:
                group.create_task(step)
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None


async def _make_mon(cluster: CephCluster) -> None:
    monmap = cluster.dir / "monmap"
    addrs = f"[v2:{cluster.mon_addr},v1:{cluster.mon_addr_v1}]"
    await _run(
        ["monmaptool", "--create", "--clobber", "--fsid", cluster.fsid,
         "--addv", MON_ID, addrs, str(monmap)],
        what=f"{cluster.site}: monmaptool",
    )
    await _run(
        ["ceph-mon", "-c", str(cluster.conf), "--mkfs", "-i", MON_ID,
         "--monmap", str(monmap), "--keyring", str(cluster.dir / "mon.keyring")],
        what=f"{cluster.site}: ceph-mon --mkfs", log=_log_path(cluster, "mon"),
    )


async def _make_osd(cluster: CephCluster, osd_uuid: str) -> None:
    await _run(
        ["ceph-osd", "-c", str(cluster.conf), "-i", str(OSD_ID), "--mkfs",
         "--osd-uuid", osd_uuid, "--no-mon-config"],
        what=f"{cluster.site}: ceph-osd --mkfs", log=_log_path(cluster, "osd"),
        timeout=120.0,
    )


async def _restart(cluster: CephCluster) -> None:
    """Start whichever daemon of a finished cluster is not running."""
    alive = _alive_daemons(cluster.dir)
    try:
        if f"mon.{MON_ID}" not in alive and cluster.netns is None:  # in its own namespace nobody else binds
            for addr in (cluster.mon_addr, cluster.mon_addr_v1):
                if not ports.is_free(cluster.host, int(addr.rsplit(":", 1)[1])):
                    raise LabError(
                        f"{cluster.site}: cannot restart its mon, port {addr} is taken "
                        f"by another process; `down` and remove {cluster.dir} to re-create it"
                    )
        if f"mon.{MON_ID}" not in alive:
            await _start_daemon(cluster, "mon")
        if f"osd.{OSD_ID}" not in alive:
            await _start_daemon(cluster, "osd")
        await _wait_osd_up(cluster)
    except BaseException:
        await _stop_cluster(cluster.dir)
        raise


async def _start_daemon(cluster: CephCluster, kind: str) -> None:
    """Start a mon or OSD in the foreground, as our child in a session of its own.

    Foreground rather than self-daemonising because on hosts whose PID 1 does
    not reap orphans (containers, microVMs) every exited daemon would stay a
    zombie; as our child, `down()` reaps it when the same process stops it
    (tests, bench, demo). The new session keeps terminal signals away from it.
    """
    daemon_id = MON_ID if kind == "mon" else str(OSD_ID)
    binary = shutil.which(f"ceph-{kind}")
    if binary is None:
        raise LabError(f"ceph-{kind} is not installed (run scripts/setup.sh)")
    log = _log_path(cluster, kind)
    pid_file = cluster.dir / "run" / f"{kind}.{daemon_id}.pid"
    pid_file.unlink(missing_ok=True)
    argv = [*cluster.exec_prefix, binary, "-f", "-c", str(cluster.conf), "-i", daemon_id]
    executable = shutil.which(argv[0])
    if executable is None:
        raise LabError(f"{argv[0]} is not installed")
    with log.with_suffix(".stderr").open("ab") as out:
        log_offset = out.tell()
        pid = os.posix_spawn(
            executable, argv, os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                (os.POSIX_SPAWN_DUP2, out.fileno(), 2),
            ],
            setsid=True,
        )
    try:
        await _wait_started(cluster, kind, pid, pid_file, log_offset)
    except BaseException:
        # Failed, timed out or cancelled: stop it even before its pid file exists.
        await _stop_pid(pid, cluster.conf)
        raise


async def _wait_started(cluster: CephCluster, kind: str, pid: int, pid_file: Path, log_offset: int) -> None:
    log = _log_path(cluster, kind)
    deadline = time.monotonic() + CLI_TIMEOUT_S
    # A mon that can't bind its port retries for ever: its log tells at once.
    while not await _daemon_ready(kind, pid, pid_file, cluster.mon_addr) or _bind_failed(log, log_offset):
        if _bind_failed(log, log_offset):
            raise MonPortTaken(f"{cluster.site}: ceph-{kind} can't bind its port, another process took it "
                               f"(mon at {cluster.mon_addr}, {cluster.mon_addr_v1})")
        if procs.reap(pid):
            raise LabError(f"{cluster.site}: ceph-{kind} exited while starting{_tail(log)}")
        if time.monotonic() > deadline:
            raise LabError(f"{cluster.site}: ceph-{kind} not ready after {CLI_TIMEOUT_S:.0f}s{_tail(log)}")
        await asyncio.sleep(0.05)


async def _daemon_ready(kind: str, pid: int, pid_file: Path, mon_addr: str) -> bool:
    """Started: it wrote its pid file and, for a mon, listens on its port itself
    (a connection alone could reach whoever else holds the port).

    (For an OSD, `_wait_osd_up` then waits until the mon sees it up.)
    """
    try:
        if pid_file.read_text().strip() != str(pid):
            return False
    except OSError:
        return False
    return kind == "osd" or procs.listens_on(pid, int(mon_addr.rsplit(":", 1)[1]))


async def _wait_osd_up(cluster: CephCluster) -> None:
    deadline = time.monotonic() + OSD_UP_TIMEOUT_S
    while time.monotonic() < deadline:
        stat = json.loads(await _ceph(cluster, "osd", "stat", "-f", "json"))
        if stat.get("num_up_osds", 0) >= 1:
            return
        if f"osd.{OSD_ID}" not in _alive_daemons(cluster.dir):
            raise LabError(f"{cluster.site}: ceph-osd exited while booting{_tail(_log_path(cluster, 'osd'))}")
        await asyncio.sleep(0.3)
    raise LabError(
        f"{cluster.site}: the OSD was not up after {OSD_UP_TIMEOUT_S:.0f}s"
        f"{_tail(_log_path(cluster, 'osd'))}"
    )


def _check_site_name(site: str) -> None:
    if not site or not site.replace("-", "").replace("_", "").isalnum():
        raise LabError(f"site name {site!r} must be letters, digits, '-' or '_'")


# --- state ---------------------------------------------------------------------


def _save_state(cluster: CephCluster) -> None:
    tmp = cluster.dir / (STATE_FILE + ".tmp")
    procs.write_private(tmp, json.dumps(cluster.to_json(), indent=2) + "\n")
    os.replace(tmp, cluster.dir / STATE_FILE)


def _load_state(cdir: Path) -> CephCluster | None:
    try:
        return CephCluster.from_json(json.loads((cdir / STATE_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise LabError(f"{cdir / STATE_FILE} is unreadable ({exc}); remove {cdir} to re-create it") from exc


# --- processes -------------------------------------------------------------------


def _alive_daemons(cdir: Path) -> dict[str, int]:
    """daemon name ("mon.a", "osd.0") → pid, for this cluster's live daemons."""
    alive = {}
    for pid_file in (cdir / "run").glob("*.pid"):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if procs.is_ours(pid, cdir / "ceph.conf"):
            alive[pid_file.stem] = pid
    return alive


async def _stop_cluster(cdir: Path) -> None:
    # OSDs first: an OSD whose mon is gone lingers for seconds before exiting.
    for kind in ("osd", "mon"):
        alive = {n: p for n, p in _alive_daemons(cdir).items() if n.startswith(kind + ".")}
        await asyncio.gather(*(_stop_pid(pid, cdir / "ceph.conf") for pid in alive.values()))


async def _stop_pid(pid: int, conf: Path) -> None:
    await procs.stop(pid, conf, timeout_s=STOP_TIMEOUT_S)


async def _ceph(cluster: CephCluster, *args: str, stdin: bytes | None = None) -> str:
    # --connect-timeout bounds the wait for the mon; the asyncio timeout in
    # _run also covers commands that hang once connected (no mgr here).
    return await _run(
        [*cluster.exec_prefix, "ceph", *cluster.cli_args, "--connect-timeout", str(int(CLI_TIMEOUT_S - 5)), *args],
        what=f"{cluster.site}: ceph {' '.join(args[:3])}", stdin=stdin,
    )


async def _run(
    argv: list[str], *, what: str, stdin: bytes | None = None,
    timeout: float = CLI_TIMEOUT_S, log: Path | None = None,
) -> str:
    """Run a command without blocking the loop; LabError with context on failure.

    Daemon starts get stdout/stderr as files, not pipes: the daemonised child
    keeps them open, and waiting for EOF on a pipe would wait for its death.
    """
    with ExitStack() as stack:
        if log is not None:
            err_path = log.with_suffix(".stderr")
            out = stack.enter_context(err_path.open("ab"))
            stdout: Any = out
            stderr: Any = out
        else:
            stdout = stderr = asyncio.subprocess.PIPE
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=stdout, stderr=stderr,
        )
        try:
            out_b, err_b = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except TimeoutError:
            raise LabError(f"{what}: `{' '.join(argv)}` timed out after {timeout:.0f}s{_tail(log)}") from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: leave no orphan
                proc.kill()
                await proc.wait()
    if proc.returncode != 0:
        detail = (err_b or b"").decode(errors="replace").strip()[-2000:]
        raise LabError(
            f"{what}: `{' '.join(argv)}` exited with {proc.returncode}"
            + (f":\n{detail}" if detail else "") + _tail(log)
        )
    return (out_b or b"").decode()


def _bind_failed(log: Path, offset: int) -> bool:
    """Whether the daemon's stderr says, since `offset`, that its address was in use."""
    try:
        with log.with_suffix(".stderr").open("rb") as fh:
            fh.seek(offset)
            return b"Address already in use" in fh.read()
    except OSError:
        return False


def _log_path(cluster: CephCluster, kind: str) -> Path:
    name = f"mon.{MON_ID}" if kind == "mon" else f"osd.{OSD_ID}"
    return cluster.dir / "log" / f"{name}.log"


def _tail(path: Path | None) -> str:
    return procs.tail(path, lines=25)
