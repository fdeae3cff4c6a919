"""The lab's config files, built as data and written with a TOML writer.

Every value (paths, names, tokens) goes through tomli-w, so no quoting rule is
ever hand-written. The files say what an operator would write by hand for the
same deployment (see README "Configuration").
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Protocol

import tomli_w

from edgesync.lab.lab_tls import TlsFiles
from edgesync.lab.procs import write_private

# The lab serves test images from 127.0.0.1 on high ports, so the hub's URI
# filter lets any port through.
MAX_IMAGE_SIZE_BYTES = 16 << 30
LOCK_TTL_S = 120
# The lab's agents heartbeat every second; the hub counts one silent this long as down.
HEARTBEAT_INTERVAL_S = 1
STALE_AFTER_S = 5


class Broker(Protocol):
    """Where the agents and the hub reach the lab's Mosquitto, as whom."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def hub_user(self) -> str: ...


class Cluster(Protocol):
    """What a site's rbd store needs of its lab Ceph cluster."""

    @property
    def conf(self) -> Path: ...
    @property
    def pool(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def keyring(self) -> Path: ...


def store_dir(site: str) -> Path:
    """A file store's directory, relative to the lab directory."""
    return Path("stores") / site


def write_site_file(directory: Path, site: str, *, central: bool, store: str, cluster: Cluster | None,
                    agent: dict[str, Any] | None) -> Path:
    """`sites/SITE.toml`: the site, its store and (at an edge with an agent) its [agent] table."""
    path = directory / "sites" / f"{site}.toml"
    data: dict[str, Any] = {
        "name": site, "role": "central" if central else "edge", "availability_zone": site,
        "store": {"type": store, "description": f"{site} site store ({store})", **_store_location(
            directory, site, cluster)},
    }
    if agent is not None:
        data["agent"] = agent
    path.write_text(tomli_w.dumps(data))
    return path


def _store_location(directory: Path, site: str, cluster: Cluster | None) -> dict[str, str]:
    if cluster is None:
        return {"path": str(directory / store_dir(site))}
    return {"ceph_conf": str(cluster.conf), "pool": cluster.pool, "user": cluster.user,
            "keyring": str(cluster.keyring)}


def agent_table(directory: Path, site: str, *, hub_url: str, listen: str, broker: Broker,
                broker_user: str, tls: TlsFiles | None, broker_identity: TlsFiles | None) -> dict[str, Any]:
    """An edge agent's [agent] table; writes the token the hub will know it by.
    `tls`: its HTTPS certificate (None: plaintext); `broker_identity`: its
    client certificate for the broker (None: a password)."""
    secrets_dir = directory / "secrets"
    token_file = secrets_dir / f"{site}.token"
    write_private(token_file, secrets.token_hex(16) + "\n")
    return {
        "hub_url": hub_url, "token_file": str(token_file), "state_dir": str(directory / "agents" / site),
        "listen": listen, "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
        "tls": tls.table() if tls else {"plaintext": True},
        "broker": {"host": broker.host, "port": broker.port, "username": broker_user,
                   **_broker_auth(broker_identity, secrets_dir / f"{broker_user}.mqtt")},
    }


def _broker_auth(identity: TlsFiles | None, password_file: Path) -> dict[str, str]:
    return identity.table() if identity else {"password_file": str(password_file)}


def write_hub_files(directory: Path, *, listen: str, admin_token: str, member_token: str,
                    broker: Broker | None, edges: list[str], offline_deadline_s: float,
                    tls: TlsFiles | None, broker_identity: TlsFiles | None) -> Path:
    """`hub.toml` and its `tokens.toml`; returns the path of hub.toml. `tls`:
    the hub's HTTPS certificate (None: plaintext); `broker_identity`: its
    client certificate for the broker (None: a password)."""
    tokens = directory / "tokens.toml"
    write_private(tokens, tomli_w.dumps({"tokens": _tokens(directory, admin_token, member_token, edges)}))
    config: dict[str, Any] = {
        "hub": {"listen": listen, "state_dir": str(directory / "hub-state"),
                "sites_dir": str(directory / "sites"), "tokens_file": str(tokens), "show_locations": True,
                "tls": tls.table() if tls else {"plaintext": True}},
        "import": {"max_image_size_bytes": MAX_IMAGE_SIZE_BYTES, "lock_ttl_s": LOCK_TTL_S,
                   "uri_filter": {"allowed_schemes": ["http", "https"], "allowed_ports": []}},
    }
    if broker is not None:
        config["bus"] = {"host": broker.host, "port": broker.port, "username": broker.hub_user,
                         **_broker_auth(broker_identity, directory / "secrets" / f"{broker.hub_user}.mqtt")}
        # A copy to a site that stays down for the offline deadline fails with "site offline".
        config["agents"] = {"stale_after_s": STALE_AFTER_S, "offline_deadline_s": offline_deadline_s}
    path = directory / "hub.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def _tokens(directory: Path, admin_token: str, member_token: str, edges: list[str]) -> dict[str, Any]:
    table: dict[str, Any] = {
        admin_token: {"user": "admin", "project": "admin", "roles": ["admin"]},
        member_token: {"user": "demo", "project": "demo", "roles": ["member"]},
    }
    for site in edges:  # each agent's token: it pulls central's copies with it
        site_token = (directory / "secrets" / f"{site}.token").read_text().strip()
        table[site_token] = {"user": f"agent-{site}", "project": "edgesync-agents", "roles": ["agent"]}
    return table
