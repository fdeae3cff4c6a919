"""A local multi-site deployment: `edgesync lab up|down|status`.

Everything lives under one directory (default `.lab`): the site files, the hub
config and tokens, the hub's state, one Ceph cluster per site when the store is
rbd, the logs, and `lab.json` describing it all. Processes are started detached
and stopped by pid. `up` on a running lab changes nothing; `up` on a stopped
lab starts it afresh; an `up` that fails stops whatever it had started.
"""

from __future__ import annotations

import secrets
import socket
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgesync.lab import configs, daemons, lab_tls
from edgesync.lab import wan as wan_links
from edgesync.lab.certs import LabCA
from edgesync.lab.errors import LabError
from edgesync.lab.ports import listening_socket
from edgesync.lab.procs import write_private

if TYPE_CHECKING:  # imported when used: only an rbd lab needs Ceph, only agents a broker
    from edgesync.lab.ceph import CephCluster
    from edgesync.lab.mosquitto import BrokerInfo

__all__ = ["LabError", "down", "link_bytes", "read_info", "set_link", "start_agent", "start_broker", "start_hub",
           "start_keystone", "status", "stop_agent", "stop_broker", "stop_hub", "stop_keystone", "up"]

HOST = "127.0.0.1"
HUB_PORT = 9292  # in the WAN lab, where each site has a namespace (and its ports) to itself
AGENT_PORT = 9393
# How long the lab's hub lets a copy wait for a site that is down before that
# store fails with "site offline" (tests of that deadline ask for less).
OFFLINE_DEADLINE_S = 300.0


def read_info(directory: Path) -> dict[str, Any]:
    return daemons.read_info(Path(directory).resolve())


status = read_info


async def up(directory: Path, *, store: str = "file", sites: list[str] | None = None,
             agents: bool = True, offline_deadline_s: float = OFFLINE_DEADLINE_S,
             wan: str | None = None, auth: str = "token", agents_per_process: int = 1,
             plaintext: bool = False) -> dict[str, Any]:
    """Start the lab and return its lab.json once the hub answers and (with
    `agents`, the default) every edge site's agent is up as the hub sees it.
    Without agents the hub writes every store itself (in-hub mode). With
    `wan` (a rate, see `wan.parse_rates`) every site gets a network namespace
    and a shaped link of its own. `agents_per_process` > 1 runs that many
    edges' agents in each agent process (the real agent, one instance per
    site: a lab of hundreds of sites on a small machine). TLS unless
    `plaintext`: a new lab CA (lab.json's ca_file), HTTPS hub and agents,
    MQTT over TLS with a client certificate per site (lab/lab_tls.py,
    lab/mosquitto.py). If any step
    fails, everything started before it is stopped again."""
    directory = Path(directory).resolve()
    sites = sites or ["central", "dcn0", "dcn1"]
    if len(set(sites)) != len(sites) or not sites:
        raise LabError(f"--sites needs distinct site names, got {sites}")
    if auth not in ("token", "keystone"):
        raise LabError(f"--auth must be token or keystone, got {auth!r}")
    if auth == "keystone" and wan:
        # Keystone listens in the machine's namespace, where the sites' agents can't reach it.
        raise LabError("--auth keystone can't be combined with --wan yet")
    if agents_per_process < 1:
        raise LabError(f"--agents-per-process must be at least 1, got {agents_per_process}")
    if agents_per_process > 1 and wan:
        # Each WAN site's agent lives in its site's namespace: a process can't be in two.
        raise LabError("--agents-per-process can't be combined with --wan (each site's agent is in its namespace)")
    if not offline_deadline_s > 0:
        raise LabError(f"--offline-deadline-s must be more than 0, got {offline_deadline_s:g}")
    links = wan_links.plan(directory, wan_links.parse_rates(wan, sites)) if wan else {}
    if (directory / daemons.LAB_FILE).exists():
        if daemons.hub_running(read_info(directory)):
            return read_info(directory)  # already running: change nothing
        await down(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "logs").mkdir(exist_ok=True)
    try:
        if links:
            wan_links.save(directory, links)
            await wan_links.create(links)
        with ExitStack() as held:  # listening sockets not yet handed to their daemon
            edges = sites[1:] if agents else []
            socks = {name: [held.enter_context(s) for s in _sockets(name, sites, links)] for name in ["", *edges]}
            tls = None if plaintext else lab_tls.make(
                directory, [_address(s).rpartition(":")[0] for s in socks[""]],
                {name: _address(socks[name][0]).rpartition(":")[0] for name in edges})
            await _prepare(directory, store, sites, edges, socks, offline_deadline_s, links, tls)
            if agents_per_process > 1:
                daemons.save_info(directory, {**read_info(directory),
                                              "agent_groups": daemons.agent_groups(edges, agents_per_process)})
            if auth == "keystone":
                await _with_keystone(directory, edges)
            await daemons.start_hub(directory, socks.pop(""))
            await daemons.start_agents(directory, edges, socks)
    except BaseException as failed:  # cancelled (Ctrl-C) too: leave nothing running
        try:
            await down(directory)
        except Exception as cleanup:  # noqa: BLE001 — the first failure is raised, this one told with it
            failed.add_note(f"stopping what `lab up` had started failed too: {cleanup}")
        raise
    return read_info(directory)


def _sockets(name: str, sites: list[str], links: dict[str, wan_links.Link]) -> list[socket.socket]:
    """The listening sockets of the hub (name "") or an edge's agent. In the
    WAN lab they are made in the site's namespace on fixed ports (nobody else
    binds there), and the hub gets one more in the machine's own namespace:
    the way in for operators' clients."""
    if not links:
        return [listening_socket(HOST)]
    if name == "":
        return [listening_socket(links[sites[0]].address, HUB_PORT, netns=links[sites[0]].netns),
                listening_socket(HOST)]
    return [listening_socket(links[name].address, AGENT_PORT, netns=links[name].netns)]


async def _prepare(directory: Path, store: str, sites: list[str], edges: list[str],
                   socks: dict[str, list[socket.socket]], offline_deadline_s: float,
                   links: dict[str, wan_links.Link], tls: lab_tls.LabTls | None) -> None:
    """The Ceph clusters and the broker, then every file that names them, and lab.json."""
    central = links.get(sites[0])
    clusters = await _start_ceph(directory, sites, links) if store == "rbd" else {}
    broker = await _start_broker(directory, edges, central, tls) if edges else None
    hub_listen = _address(socks[""][0])
    scheme = "https" if tls else "http"

    def identity(user: str) -> lab_tls.TlsFiles | None:
        return tls.identity(broker.identity(user)) if tls and broker else None

    (directory / "sites").mkdir(exist_ok=True)
    for old in (directory / "sites").glob("*.toml"):
        old.unlink()
    for i, name in enumerate(sites):
        agent = None
        if name in edges:
            assert broker is not None
            agent = configs.agent_table(directory, name, hub_url=f"{scheme}://{hub_listen}",
                                        listen=_address(socks[name][0]), broker=broker,
                                        broker_user=_site_user(name), tls=tls.agents[name] if tls else None,
                                        broker_identity=identity(_site_user(name)))
        configs.write_site_file(directory, name, central=i == 0, store=store, cluster=clusters.get(name),
                                agent=agent)
    admin_token, member_token = secrets.token_hex(16), secrets.token_hex(16)
    hub_config = configs.write_hub_files(directory, listen=hub_listen, admin_token=admin_token,
                                         member_token=member_token, broker=broker, edges=edges,
                                         offline_deadline_s=offline_deadline_s, tls=tls.hub if tls else None,
                                         broker_identity=identity(broker.hub_user) if broker else None)
    daemons.save_info(directory, {
        "dir": str(directory), "store": store, "hub_url": f"{scheme}://{_address(socks[''][-1])}",
        "ca_file": str(tls.ca_file) if tls else None, "plaintext": tls is None,
        "hub_listen": hub_listen, "hub_pid": None,
        "admin_token": admin_token, "member_token": member_token, "hub_config": str(hub_config),
        "broker": {"host": broker.host, "port": broker.port} if broker else None,
        "wan": {"switch_netns": wan_links.switch_netns(links),
                "subnet": f"{wan_links.SUBNET}.0.0/{wan_links.PREFIX_LEN}"} if links else None,
        "sites": {name: {**_site_info(name, i, store, clusters.get(name),
                                      f"{scheme}://{_address(socks[name][0])}" if name in edges else None),
                         **_link_info(links.get(name))}
                  for i, name in enumerate(sites)},
    })


def _link_info(link: wan_links.Link | None) -> dict[str, Any]:
    if link is None:
        return {"netns": None, "address": None, "rate": None}
    return {"netns": link.netns, "address": link.address, "rate": link.rate, "link": "up"}


async def _with_keystone(directory: Path, edges: list[str]) -> None:
    """A real Keystone (lab/keystone.py), and the lab's files pointed at it;
    lab.json's tokens become Keystone tokens of the admin and the member."""
    from edgesync.lab import keystone

    info = read_info(directory)
    ca = LabCA.load(Path(info["ca_file"]).parent) if info.get("ca_file") else None
    ks = await keystone.up(directory, edges=edges, hub_url=info["hub_url"], ca=ca)
    info["keystone"] = ks.info()
    daemons.save_info(directory, info)  # its pid, for `down`, before anything else can fail
    keystone.configure(ks, Path(info["hub_config"]), {site: daemons.agent_config(directory, site) for site in edges})
    info.update(admin_token=ks.admin_token, member_token=await keystone.user_token(ks, "member"))
    daemons.save_info(directory, info)


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def _site_user(site: str) -> str:
    from edgesync.lab import mosquitto

    return mosquitto.site_user(site)


async def down(directory: Path) -> None:
    """Stop everything the lab started (agents, hub, broker, Ceph), by pid. Idempotent."""
    directory = Path(directory).resolve()
    info = read_info(directory) if (directory / daemons.LAB_FILE).exists() else {}
    await daemons.stop_all(directory, info)
    if info.get("keystone"):
        from edgesync.lab import keystone

        await keystone.stop(directory, info["keystone"])
    if (directory / "mosquitto").exists():
        from edgesync.lab import mosquitto

        await mosquitto.down(directory / "mosquitto")
    if (directory / "ceph").exists():
        from edgesync.lab import ceph

        await ceph.down(directory / "ceph")
    await wan_links.remove(wan_links.load(directory))
    if info:
        daemons.save_info(directory, info)


async def start_hub(directory: Path) -> int:
    """Start the lab's hub (if it isn't running) and wait until it serves; a
    hub started again recovers what the last one left unfinished."""
    return await daemons.start_hub(Path(directory).resolve())


async def stop_hub(directory: Path, *, kill: bool = False) -> None:
    """Stop the lab's hub: SIGTERM (a clean stop), or SIGKILL with `kill`
    (a crash: what it was doing is left for the next start to recover)."""
    await daemons.stop_hub(Path(directory).resolve(), kill=kill)


async def start_agent(directory: Path, site: str) -> int:
    """Start one site's agent (if it isn't running) and wait until it serves
    and the hub counts the site as up."""
    return (await daemons.start_agents(Path(directory).resolve(), [site]))[site]


async def stop_agent(directory: Path, site: str, *, kill: bool = False) -> None:
    """Stop one site's agent: SIGTERM (a clean stop), or SIGKILL with `kill`."""
    await daemons.stop_agent(Path(directory).resolve(), site, kill=kill)


async def set_link(directory: Path, site: str, *, up: bool) -> None:
    """Cut (`up=False`) or heal one site's WAN link; lab.json says which."""
    directory = Path(directory).resolve()
    links = wan_links.load(directory)
    if not links:
        raise LabError(f"the lab in {directory} has no WAN (start it with `lab up --wan RATE`)")
    await wan_links.set_link(links, site, up=up)
    info = read_info(directory)
    info["sites"][site]["link"] = "up" if up else "cut"
    daemons.save_info(directory, info)


async def link_bytes(directory: Path, site: str) -> dict[str, int]:
    """Bytes that crossed one site's WAN link so far (`to_site`, `from_site`)."""
    return await wan_links.link_bytes(wan_links.load(Path(directory).resolve()), site)


async def stop_broker(directory: Path) -> None:
    """Stop the lab's Mosquitto (it saves sessions and queued messages)."""
    from edgesync.lab import mosquitto

    await mosquitto.down(_broker_dir(Path(directory).resolve()))


async def start_broker(directory: Path) -> None:
    """Start the lab's Mosquitto again, on the same port and persistence."""
    from edgesync.lab import mosquitto

    await mosquitto.start(_broker_dir(Path(directory).resolve()))


async def stop_keystone(directory: Path) -> None:
    """Stop the lab's Keystone (`lab up --auth keystone`); the hub then answers 503."""
    from edgesync.lab import keystone

    directory = Path(directory).resolve()
    await keystone.stop(directory, _keystone_info(directory))


async def start_keystone(directory: Path) -> None:
    """Start the lab's Keystone again, on the same port, database and keys."""
    from edgesync.lab import keystone

    directory = Path(directory).resolve()
    info = read_info(directory)
    info["keystone"]["pid"] = await keystone.start(directory, _keystone_info(directory))
    daemons.save_info(directory, info)


def _keystone_info(directory: Path) -> dict[str, Any]:
    entry: dict[str, Any] | None = read_info(directory).get("keystone")
    if not entry:
        raise LabError(f"the lab in {directory} has no Keystone (it was started without --auth keystone)")
    return entry


def _broker_dir(directory: Path) -> Path:
    if not read_info(directory).get("broker"):
        raise LabError(f"the lab in {directory} has no broker (it was started without --agents)")
    return directory / "mosquitto"


async def _start_broker(directory: Path, edges: list[str], central: wan_links.Link | None,
                        tls: lab_tls.LabTls | None) -> BrokerInfo:
    from edgesync.lab import mosquitto

    ca = tls.ca if tls else None
    if central is None:
        broker = await mosquitto.up(directory / "mosquitto", edges, ca=ca)
    else:  # in central's namespace, beside the hub
        broker = await mosquitto.up(directory / "mosquitto", edges, netns=central.netns, host=central.address,
                                    ca=ca)
    secrets_dir = directory / "secrets"
    secrets_dir.mkdir(exist_ok=True, mode=0o700)
    if broker.tls:
        return broker  # identities are certificates: no passwords to hand out
    for user, password in broker.users.items():
        write_private(secrets_dir / f"{user}.mqtt", password + "\n")
    return broker


async def _start_ceph(directory: Path, sites: list[str],
                      links: dict[str, wan_links.Link]) -> dict[str, CephCluster]:
    from edgesync.lab import ceph

    return await ceph.up(directory / "ceph", sites, netns=dict(links))


def _site_info(name: str, index: int, store: str, cluster: CephCluster | None,
               agent_url: str | None) -> dict[str, Any]:
    return {
        "role": "central" if index == 0 else "edge",
        "store": store,
        "availability_zone": name,
        "ceph_conf": str(cluster.conf) if cluster else None,
        "pool": cluster.pool if cluster else None,
        "fsid": cluster.fsid if cluster else None,
        "keyring": str(cluster.keyring) if cluster else None,
        "ceph_user": cluster.user if cluster else None,
        "store_path": None if cluster else str(configs.store_dir(name)),
        "agent_url": agent_url,
        "agent_pid": None,
        "metrics_url": f"{agent_url}/metrics" if agent_url else None,
    }
