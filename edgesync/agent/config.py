"""The agent's configuration: the site's own TOML file plus its `[agent]` table.

    name = "dcn0"                      # the site, as in sites/<name>.toml
    role = "edge"
    availability_zone = "dcn0"
    [store] ...

    [agent]
    hub_url = "http://central.example:9292"
    token_file = "/etc/edgesync/dcn0.token"   # this site's token for the data endpoints
    state_dir = "/var/lib/edgesync/dcn0"      # the journal lives here
    listen = "0.0.0.0:9393"                   # data endpoint + /healthz + /metrics
    max_concurrent_copies = 2
    bandwidth_limit_mbps = 0                  # megabits/s for all pulls; 0 = unlimited
    heartbeat_interval_s = 5

    [agent.tls]                               # or: plaintext = true (warned at start)
    cert_file = "/etc/edgesync/tls/dcn0.crt"  # the data endpoint's HTTPS certificate
    key_file = "/etc/edgesync/tls/dcn0.key"
    ca_file = "/etc/edgesync/tls/ca.pem"      # verifies the hub (hub_url https://…)

    [agent.http]                              # slow clients of the data endpoint (edgesync.http_limits)
    header_timeout_s = 20
    body_timeout_s = 60
    idle_timeout_s = 75

    [agent.keystone]                          # only for a hub with auth = "keystone"
    auth_url = "https://keystone.example:5000/v3"
    application_credential_id = "…"           # listed in the hub's [keystone.agents]
    application_credential_secret_file = "/etc/edgesync/dcn0.appcred"
    ca_file = "/etc/edgesync/tls/ca.pem"      # verifies Keystone (auth_url https://…)

    [agent.broker]
    host = "central.example"
    port = 8883
    ca_file = "/etc/edgesync/tls/ca.pem"      # MQTT over TLS, the broker verified against it
    cert_file = "/etc/edgesync/tls/site-dcn0.crt"  # the site's broker identity (CN site-dcn0)
    key_file = "/etc/edgesync/tls/site-dcn0.key"
    # or, without TLS: username = "site-dcn0" and password_file = "/etc/edgesync/dcn0.mqtt"

Site and agent come from one file so they can't disagree about which site
this is; `load_site` does the site part, the AZ pairing check included, and
any refusal stops the agent before it touches the broker or the store.
Secrets are read once, here, and kept out of reprs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgesync.bus import BusSettings, topics
from edgesync.bus.errors import BusError
from edgesync.config import ReadTimeouts, SiteConfig, _load_toml, _Reader, load_read_timeouts, load_site, load_tls
from edgesync.errors import ConfigError
from edgesync.tls import TlsConfig

DEFAULT_MAX_CONCURRENT_COPIES = 2
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
# Running tasks get this long at a stop before they checkpoint and are cancelled;
# with the broker goodbye (at most 4 s) the agent stops within ~10 s.
DEFAULT_SHUTDOWN_GRACE_S = 5.0
# How long a copy keeps retrying retryable failures (a WAN cut, a cluster
# restarting) before it reports them to the hub.
DEFAULT_COPY_RETRY_WINDOW_S = 900.0


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int
    username: str
    password: str | None = field(repr=False)
    client_id: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def settings(self) -> BusSettings:
        return BusSettings(host=self.host, port=self.port, username=self.username,
                           password=self.password, client_id=self.client_id,
                           ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file)


@dataclass(frozen=True)
class AgentKeystone:
    """`[agent.keystone]`: the agent's application credential, for a hub with auth = "keystone"."""

    auth_url: str
    application_credential_id: str
    secret: str = field(repr=False)
    ca_file: Path | None = None  # verifies an https:// auth_url (None: the system's CAs)


@dataclass(frozen=True)
class AgentConfig:
    site: SiteConfig
    hub_url: str
    token: str = field(repr=False)
    broker: BrokerConfig
    state_dir: Path
    listen_host: str
    listen_port: int
    tls: TlsConfig
    max_concurrent_copies: int = DEFAULT_MAX_CONCURRENT_COPIES
    bandwidth_limit_mbps: float = 0.0
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    copy_retry_window_s: float = DEFAULT_COPY_RETRY_WINDOW_S
    keystone: AgentKeystone | None = None
    read_timeouts: ReadTimeouts = field(default_factory=ReadTimeouts)  # [agent.http]

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite3"

    @property
    def bandwidth_limit_bytes_per_s(self) -> float:
        """0 when unlimited. Megabits, as links are sold: 100 Mbps = 12.5 MB/s."""
        return self.bandwidth_limit_mbps * 1_000_000 / 8


def load_agent(path: Path) -> AgentConfig:
    """The agent's config from a site file, or ConfigError naming file and key."""
    path = Path(path)
    try:
        site = load_site(path)
    except ConfigError as exc:
        raise ConfigError(f"the agent can't start: {exc.message}") from exc
    if site.is_central:
        raise ConfigError(f"{path}: site {site.name!r} is the central site; it has no agent "
                          "(the hub owns the central store)")
    _check_site_name(path, site.name)
    root = _Reader(_load_toml(path), str(path))
    if "agent" not in root.table:
        raise ConfigError(f"{path}: an [agent] table is required to run the agent")
    r = root.sub("agent")
    base = path.parent
    host, port = _listen(r)
    return AgentConfig(
        site=site,
        hub_url=_url(r, "hub_url"),
        token=_secret(r, "token_file", base),
        broker=_broker(r.sub("broker"), base, site.name),
        state_dir=_required_path(r, "state_dir", base),
        listen_host=host, listen_port=port, tls=load_tls(r, base),
        max_concurrent_copies=_positive_int(r, "max_concurrent_copies", DEFAULT_MAX_CONCURRENT_COPIES),
        bandwidth_limit_mbps=_non_negative(r, "bandwidth_limit_mbps", 0.0),
        heartbeat_interval_s=_positive(r, "heartbeat_interval_s", DEFAULT_HEARTBEAT_INTERVAL_S),
        shutdown_grace_s=_non_negative(r, "shutdown_grace_s", DEFAULT_SHUTDOWN_GRACE_S),
        copy_retry_window_s=_non_negative(r, "copy_retry_window_s", DEFAULT_COPY_RETRY_WINDOW_S),
        keystone=_keystone(r, base), read_timeouts=load_read_timeouts(r),
    )


def _keystone(agent: _Reader, base: Path) -> AgentKeystone | None:
    if "keystone" not in agent.table:
        return None
    r = agent.sub("keystone")
    return AgentKeystone(auth_url=_url(r, "auth_url"),
                         application_credential_id=r.get("application_credential_id", str),
                         secret=_secret(r, "application_credential_secret_file", base),
                         ca_file=r.path("ca_file", base, None))


def _check_site_name(path: Path, name: str) -> None:
    # Stricter than site files in general: the name becomes MQTT topic levels.
    try:
        topics.check_site(name)
    except BusError as exc:
        raise ConfigError(f"{path}: 'name' {exc.message}") from exc


def _broker(r: _Reader, base: Path, site: str) -> BrokerConfig:
    port = r.get("port", int, 1883)
    if not 0 < port < 65536:
        raise ConfigError(f"{r.where}: 'port' must be 1-65535, got {port}")
    cert_file = r.path("cert_file", base, None)
    if cert_file is None and "password_file" not in r.table:
        raise ConfigError(f"{r.where}: 'cert_file' and 'key_file' (the site's broker identity, over TLS) "
                          "or 'password_file' are required")
    return BrokerConfig(
        host=r.get("host", str),
        port=port,
        username=r.get("username", str, f"site-{site}"),
        password=_secret(r, "password_file", base) if "password_file" in r.table else None,
        client_id=r.get("client_id", str, None),
        ca_file=r.path("ca_file", base, None), cert_file=cert_file, key_file=r.path("key_file", base, None),
    )


def _listen(r: _Reader) -> tuple[str, int]:
    listen = r.get("listen", str)
    host, _, port_s = listen.rpartition(":")
    if not host or not port_s.isdigit() or int(port_s) > 65535:
        raise ConfigError(f"{r.where}: 'listen' must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port_s)


def _url(r: _Reader, key: str) -> str:
    url: str = r.get(key, str)
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{r.where}: '{key}' must be an http:// or https:// URL, got {url!r}")
    return url.rstrip("/")


def _required_path(r: _Reader, key: str, base: Path) -> Path:
    path = r.path(key, base)
    assert path is not None  # required: _Reader raised otherwise
    return path


def _secret(r: _Reader, key: str, base: Path) -> str:
    """The content of the file `key` names, stripped; never empty."""
    path = _required_path(r, key, base)
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{r.where}: '{key}' names {path}, which can't be read: "
                          f"{exc.strerror or exc}") from exc
    if not value:
        raise ConfigError(f"{r.where}: '{key}' names {path}, which is empty")
    return value


def _positive_int(r: _Reader, key: str, default: int) -> int:
    value: int = r.get(key, int, default)
    if value < 1:
        raise ConfigError(f"{r.where}: '{key}' must be at least 1, got {value}")
    return value


def _positive(r: _Reader, key: str, default: float) -> float:
    value = float(r.get(key, (int, float), default))
    if value <= 0:
        raise ConfigError(f"{r.where}: '{key}' must be more than 0, got {value:g}")
    return value


def _non_negative(r: _Reader, key: str, default: float) -> float:
    value = float(r.get(key, (int, float), default))
    if value < 0:
        raise ConfigError(f"{r.where}: '{key}' must not be negative, got {value:g}")
    return value
