"""Configuration: inert data, read from TOML and validated once at start.

Two kinds of file:

* a **site** file (`sites/<name>.toml`), one per site: its name, role
  (central or edge), availability zones and its store;
* the **hub** file (`hub.toml`): where the hub listens, its state directory,
  where the site files and the tokens file are, and the import options.

Any mistake raises `ConfigError` naming the file and the key to fix.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from edgesync.errors import ConfigError
from edgesync.tls import PLAINTEXT, TlsConfig
from edgesync.transfer.limits import TransferLimits

ROLES = ("central", "edge")
STORE_TYPES = ("file", "rbd")
DEFAULT_DISK_FORMATS = ("raw", "qcow2", "vmdk", "vdi", "vhd", "vhdx", "iso")
CONTAINER_FORMATS = ("bare", "ovf", "ova", "aki", "ari", "ami", "docker", "compressed")
IMPORT_METHODS = ("glance-direct", "web-download", "copy-image")
AUTH_MODES = ("token", "keystone", "noauth")


@dataclass(frozen=True)
class StoreConfig:
    type: str
    description: str = ""
    read_only: bool = False
    # file
    path: Path | None = None
    # rbd
    ceph_conf: Path | None = None
    pool: str = "images"
    user: str = "admin"
    keyring: Path | None = None
    connect_timeout_s: float = 10.0


@dataclass(frozen=True)
class SiteConfig:
    name: str
    role: str
    availability_zone: str
    compute_availability_zone: str
    storage_availability_zone: str
    store: StoreConfig
    source: Path | None = None
    # Where the hub reaches this site's agent (data endpoint), and the token
    # that agent accepts; from the site file's [agent] table, if it has one.
    agent_url: str | None = None
    agent_token_file: Path | None = None
    # The project that owns images the site's agent registers (Nova snapshots
    # made there); None: the agent token's own project.
    project: str | None = None

    @property
    def is_central(self) -> bool:
        return self.role == "central"


@dataclass(frozen=True)
class UriFilter:
    """web-download source filter, as glance-image-import.conf has it."""

    allowed_schemes: tuple[str, ...] = ("http", "https")
    disallowed_schemes: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    disallowed_hosts: tuple[str, ...] = ()
    allowed_ports: tuple[int, ...] = (80, 443)
    disallowed_ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class InjectConfig:
    """Image property injection at import (seed chapter 4.3)."""

    properties: dict[str, str] = field(default_factory=dict)
    ignore_user_roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportConfig:
    enabled_methods: tuple[str, ...] = IMPORT_METHODS
    disk_formats: tuple[str, ...] = DEFAULT_DISK_FORMATS
    convert_to_raw: bool = True
    max_image_size_bytes: int = 1 << 40
    lock_ttl_s: float = 600.0
    uri_filter: UriFilter = field(default_factory=UriFilter)
    inject: InjectConfig = field(default_factory=InjectConfig)
    web_download_timeout_s: float = 600.0


@dataclass(frozen=True)
class HubBusConfig:
    """The hub's MQTT connection; without it, copies run inside the hub."""

    host: str
    port: int
    username: str
    password_file: Path | None = None  # not needed with a client certificate
    offline_deadline_s: float = 3600.0
    # TLS to the broker: ca_file verifies it; cert_file/key_file are the hub's
    # broker identity (the certificate's CN is its user name). No ca_file: plaintext.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    stale_after_s: float = 30.0


@dataclass(frozen=True)
class KeystoneConfig:
    """`[keystone]`: how the hub validates tokens with Keystone (auth = "keystone")."""

    auth_url: str
    username: str
    password: str = field(repr=False)
    project_name: str = "service"
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    timeout_s: float = 5.0
    # A validation is reused this long at most (never past the token's
    # expiry): the bound on how late a revoked token is still accepted.
    cache_ttl_s: float = 60.0
    cache_size: int = 10_000
    # Roles that make an X-Service-Token's holder a service (Glance's service persona).
    service_roles: tuple[str, ...] = ("service",)
    # Keystone user or application-credential id -> the edge site whose agent it is.
    agents: dict[str, str] = field(default_factory=dict)
    ca_file: Path | None = None  # verifies an https:// auth_url (None: the system's CAs)


@dataclass(frozen=True)
class ReadTimeouts:
    """`[hub.http]` / `[agent.http]`: seconds a server waits for slow clients (edgesync.http_limits)."""

    header_s: float = 20.0  # header_timeout_s
    body_s: float = 60.0  # body_timeout_s
    idle_s: float = 75.0  # idle_timeout_s


@dataclass(frozen=True)
class QuotaConfig:
    """`[hub.quota]`: Glance's image_size_total per project, in MiB as in
    Keystone's unified limits; -1 is unlimited (edgesync.hub.quota)."""

    image_size_total_mib: int = -1
    projects: dict[str, int] = field(default_factory=dict)  # project id -> its own limit


@dataclass(frozen=True)
class HubConfig:
    host: str
    port: int
    public_url: str
    state_dir: Path
    sites: tuple[SiteConfig, ...]
    tokens_file: Path | None
    auth: str = "token"  # "token" | "keystone" | "noauth"
    show_locations: bool = False
    policy_file: Path | None = None  # Glance's policy.yaml format; None: Glance's defaults
    imports: ImportConfig = field(default_factory=ImportConfig)
    bus: HubBusConfig | None = None
    keystone: KeystoneConfig | None = None
    transfers: TransferLimits = field(default_factory=TransferLimits)
    source: Path | None = None
    # Built by hand (tests) a HubConfig is plaintext; load_hub wants it said.
    tls: TlsConfig = PLAINTEXT
    read_timeouts: ReadTimeouts = field(default_factory=ReadTimeouts)
    quota: QuotaConfig = field(default_factory=QuotaConfig)

    @property
    def catalog_path(self) -> Path:
        return self.state_dir / "catalog.sqlite3"

    @property
    def staging_dir(self) -> Path:
        return self.state_dir / "staging"

    @property
    def central(self) -> SiteConfig:
        return next(s for s in self.sites if s.is_central)

    def site(self, name: str) -> SiteConfig | None:
        return next((s for s in self.sites if s.name == name), None)


# --- parsing -----------------------------------------------------------------


class _Reader:
    """Typed access to one TOML table, with errors that name file and key."""

    def __init__(self, table: dict[str, Any], where: str) -> None:
        self.table = table
        self.where = where

    def _fail(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.where}: '{key}' {what}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.table:
            if default is ...:
                raise self._fail(key, "is required")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self._fail(key, f"must be {_kind_name(kind)}, not a boolean")
        if not isinstance(value, kind):
            raise self._fail(key, f"must be {_kind_name(kind)}, got {value!r}")
        return value

    def str_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        items = self.get(key, list, list(default))
        if not all(isinstance(i, str) for i in items):
            raise self._fail(key, "must be a list of strings")
        return tuple(items)

    def int_list(self, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
        items = self.get(key, list, list(default))
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise self._fail(key, "must be a list of integers")
        return tuple(items)

    def sub(self, key: str) -> _Reader:
        return _Reader(self.get(key, dict, {}), f"{self.where} [{key}]")

    # Required (no default) gives a Path; a None default makes the key optional.
    @overload
    def path(self, key: str, base: Path) -> Path: ...
    @overload
    def path(self, key: str, base: Path, default: None) -> Path | None: ...

    def path(self, key: str, base: Path, default: Any = ...) -> Path | None:
        raw = self.get(key, str, default)
        if raw is None:
            return None
        return (base / raw).resolve() if not Path(raw).is_absolute() else Path(raw)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return {str: "a string", int: "an integer", bool: "true or false",
            list: "a list", dict: "a table", float: "a number"}.get(kind, kind.__name__)


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def load_site(path: Path) -> SiteConfig:
    path = Path(path)
    r = _Reader(_load_toml(path), str(path))
    base = path.parent
    name = r.get("name", str)
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{path}: 'name' must be letters, digits, '-' or '_'")
    role = r.get("role", str)
    if role not in ROLES:
        raise ConfigError(f"{path}: 'role' must be one of {', '.join(ROLES)}, got {role!r}")
    az = r.get("availability_zone", str, name)
    compute_az = r.get("compute_availability_zone", str, az)
    storage_az = r.get("storage_availability_zone", str, az)
    if not (az == compute_az == storage_az):
        raise ConfigError(
            f"{path}: site {name!r} must use one availability zone for Nova and "
            f"Cinder (availability_zone={az!r}, compute_availability_zone="
            f"{compute_az!r}, storage_availability_zone={storage_az!r}); set them equal"
        )
    agent = r.sub("agent")
    listen = agent.get("listen", str, None)
    scheme = "https" if "cert_file" in agent.sub("tls").table else "http"
    return SiteConfig(
        name=name, role=role, availability_zone=az,
        compute_availability_zone=compute_az, storage_availability_zone=storage_az,
        store=_load_store(r.sub("store"), base, name), source=path,
        agent_url=agent.get("public_url", str, f"{scheme}://{listen}" if listen else None),
        agent_token_file=agent.path("token_file", base, None),
        project=r.get("project", str, None) or None,
    )


def _load_store(r: _Reader, base: Path, site: str) -> StoreConfig:
    kind = r.get("type", str)
    if kind not in STORE_TYPES:
        raise ConfigError(f"{r.where}: 'type' must be one of {', '.join(STORE_TYPES)}, got {kind!r}")
    common = {
        "type": kind,
        "description": r.get("description", str, f"{site} ({kind})"),
        "read_only": r.get("read_only", bool, False),
    }
    if kind == "file":
        return StoreConfig(path=r.path("path", base), **common)
    return StoreConfig(
        ceph_conf=r.path("ceph_conf", base),
        pool=r.get("pool", str, "images"),
        user=r.get("user", str, "admin"),
        keyring=r.path("keyring", base, None),
        connect_timeout_s=float(r.get("connect_timeout_s", (int, float), 10.0)),
        **common,
    )


def load_sites(directory: Path) -> tuple[SiteConfig, ...]:
    directory = Path(directory)
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise ConfigError(f"{directory}: no site files (*.toml) found")
    sites = tuple(load_site(f) for f in files)
    check_sites(sites, str(directory))
    return sites


def check_sites(sites: tuple[SiteConfig, ...], where: str) -> None:
    """The DCN rules that span sites: one central, unique names, one store per AZ."""
    centrals = [s.name for s in sites if s.is_central]
    if len(centrals) != 1:
        raise ConfigError(f"{where}: exactly one site must have role = \"central\", found {centrals or 'none'}")
    seen_names: set[str] = set()
    seen_az: dict[str, str] = {}
    for s in sites:
        if s.name in seen_names:
            raise ConfigError(f"{where}: site name {s.name!r} is used twice")
        seen_names.add(s.name)
        other = seen_az.get(s.availability_zone)
        if other:
            raise ConfigError(
                f"{where}: availability zone {s.availability_zone!r} maps to two "
                f"stores ({other} and {s.name}); each AZ must map to exactly one store"
            )
        seen_az[s.availability_zone] = s.name


def load_hub(path: Path) -> HubConfig:
    path = Path(path)
    r = _Reader(_load_toml(path), str(path))
    base = path.parent
    hub = r.sub("hub")
    listen = hub.get("listen", str, "127.0.0.1:9292")
    host, _, port_s = listen.rpartition(":")
    if not host or not port_s.isdigit():
        raise ConfigError(f"{hub.where}: 'listen' must be HOST:PORT, got {listen!r}")
    auth = hub.get("auth", str, "token")
    if auth not in AUTH_MODES:
        raise ConfigError(f"{hub.where}: 'auth' must be one of {', '.join(AUTH_MODES)}, got {auth!r}")
    tls = load_tls(hub, base)
    tokens = hub.path("tokens_file", base, None)
    if auth == "token" and tokens is None:
        raise ConfigError(f"{hub.where}: 'tokens_file' is required when auth = \"token\"")
    state_dir = hub.path("state_dir", base)
    sites = load_sites(hub.path("sites_dir", base))
    keystone = _load_keystone(r, base, sites) if auth == "keystone" else None
    return HubConfig(
        host=host, port=int(port_s),
        public_url=hub.get("public_url", str, f"{tls.scheme}://{listen}").rstrip("/"),
        state_dir=state_dir,
        sites=sites, tokens_file=tokens, auth=auth, keystone=keystone,
        show_locations=hub.get("show_locations", bool, False),
        policy_file=hub.path("policy_file", base, None),
        imports=_load_imports(r.sub("import")), bus=_load_hub_bus(r, base), source=path, tls=tls,
        read_timeouts=load_read_timeouts(hub), quota=_load_quota(hub.sub("quota")),
        transfers=TransferLimits.parse(r.sub("transfers").table, f"{r.where} [transfers]"),
    )


def load_read_timeouts(daemon: _Reader) -> ReadTimeouts:
    """A daemon's [http] table (the hub's, an agent's)."""
    r, default = daemon.sub("http"), ReadTimeouts()
    values = [float(r.get(f"{what}_timeout_s", (int, float), getattr(default, f"{what}_s")))
              for what in ("header", "body", "idle")]
    if min(values) <= 0:
        raise ConfigError(f"{r.where}: header_timeout_s, body_timeout_s and idle_timeout_s must be > 0")
    return ReadTimeouts(*values)


def _load_quota(r: _Reader) -> QuotaConfig:
    projects = r.sub("projects")
    limits = {"image_size_total": r.get("image_size_total", int, -1)} | projects.table
    for key, value in limits.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < -1:
            raise ConfigError(f"{r.where}: '{key}' must be a limit in MiB (an integer >= 0, or -1: unlimited)")
    return QuotaConfig(limits["image_size_total"], dict(projects.table))


def load_tls(daemon: _Reader, base: Path) -> TlsConfig:
    """A daemon's [tls] table: HTTPS with cert_file and key_file (ca_file: what
    its clients verify peers against), or plaintext = true, said explicitly."""
    if "tls" not in daemon.table:
        raise ConfigError(f"{daemon.where}: a [tls] table is required: cert_file and key_file (and ca_file) "
                          "to serve HTTPS, or plaintext = true to serve plain HTTP")
    r = daemon.sub("tls")
    plaintext = r.get("plaintext", bool, False)
    cert, key = r.path("cert_file", base, None), r.path("key_file", base, None)
    ca = r.path("ca_file", base, None)
    if plaintext and (cert or key):
        raise ConfigError(f"{r.where}: plaintext = true and a cert_file/key_file contradict each other; "
                          "drop one")
    if not plaintext and not (cert and key):
        raise ConfigError(f"{r.where}: 'cert_file' and 'key_file' are required (or plaintext = true)")
    return TlsConfig(cert_file=cert, key_file=key, ca_file=ca, plaintext=plaintext)


def _load_keystone(root: _Reader, base: Path, sites: tuple[SiteConfig, ...]) -> KeystoneConfig:
    if "keystone" not in root.table:
        raise ConfigError(f"{root.where}: a [keystone] table is required when auth = \"keystone\"")
    r = root.sub("keystone")
    auth_url = r.get("auth_url", str).rstrip("/")
    if not auth_url.startswith(("http://", "https://")):
        raise ConfigError(f"{r.where}: 'auth_url' must be Keystone's http(s) v3 URL, got {auth_url!r}")
    password_file = r.path("password_file", base)
    try:
        password = password_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{r.where}: 'password_file' names {password_file}, which can't be read") from exc
    edges = {s.name for s in sites if not s.is_central}
    agents = r.sub("agents")  # site = "user or application credential id"
    by_id: dict[str, str] = {}
    for site, ident in agents.table.items():
        if site not in edges:
            raise ConfigError(f"{agents.where}: {site!r} is not an edge site ({', '.join(sorted(edges))})")
        if not isinstance(ident, str) or not ident:
            raise ConfigError(f"{agents.where}: '{site}' must be the agent's Keystone user or "
                              "application credential id (a string)")
        by_id[ident] = site
    ttl = float(r.get("cache_ttl_s", (int, float), 60.0))
    size = r.get("cache_size", int, 10_000)
    if ttl < 0 or size < 1:
        raise ConfigError(f"{r.where}: 'cache_ttl_s' must be ≥ 0 and 'cache_size' ≥ 1")
    return KeystoneConfig(
        auth_url=auth_url, username=r.get("username", str), password=password,
        project_name=r.get("project_name", str, "service"),
        user_domain_name=r.get("user_domain_name", str, "Default"),
        project_domain_name=r.get("project_domain_name", str, "Default"),
        timeout_s=float(r.get("timeout_s", (int, float), 5.0)), cache_ttl_s=ttl, cache_size=size,
        service_roles=r.str_list("service_roles", ("service",)), agents=by_id,
        ca_file=r.path("ca_file", base, None),
    )


def _load_hub_bus(r: _Reader, base: Path) -> HubBusConfig | None:
    if "bus" not in r.table:
        return None
    bus, agents = r.sub("bus"), r.sub("agents")
    if "password_file" not in bus.table and "cert_file" not in bus.table:
        raise ConfigError(f"{bus.where}: 'cert_file' and 'key_file' (the hub's broker identity, over TLS) "
                          "or 'password_file' are required")
    return HubBusConfig(
        host=bus.get("host", str), port=bus.get("port", int), username=bus.get("username", str, "hub"),
        password_file=bus.path("password_file", base, None),
        ca_file=bus.path("ca_file", base, None), cert_file=bus.path("cert_file", base, None),
        key_file=bus.path("key_file", base, None),
        offline_deadline_s=float(agents.get("offline_deadline_s", (int, float), 3600.0)),
        stale_after_s=float(agents.get("stale_after_s", (int, float), 30.0)),
    )


def _load_imports(r: _Reader) -> ImportConfig:
    methods = r.str_list("enabled_methods", IMPORT_METHODS)
    for m in methods:
        if m not in IMPORT_METHODS:
            raise ConfigError(f"{r.where}: unknown import method {m!r}; known: {', '.join(IMPORT_METHODS)}")
    f = r.sub("uri_filter")
    inj = r.sub("inject")
    props = inj.get("properties", dict, {})
    if not all(isinstance(v, str) for v in props.values()):
        raise ConfigError(f"{inj.where}: 'properties' values must be strings")
    return ImportConfig(
        enabled_methods=methods,
        disk_formats=r.str_list("disk_formats", DEFAULT_DISK_FORMATS),
        convert_to_raw=r.get("convert_to_raw", bool, True),
        max_image_size_bytes=r.get("max_image_size_bytes", int, 1 << 40),
        lock_ttl_s=float(r.get("lock_ttl_s", (int, float), 600.0)),
        web_download_timeout_s=float(r.get("web_download_timeout_s", (int, float), 600.0)),
        uri_filter=UriFilter(
            allowed_schemes=f.str_list("allowed_schemes", ("http", "https")),
            disallowed_schemes=f.str_list("disallowed_schemes", ()),
            allowed_hosts=f.str_list("allowed_hosts", ()),
            disallowed_hosts=f.str_list("disallowed_hosts", ()),
            allowed_ports=f.int_list("allowed_ports", (80, 443)),
            disallowed_ports=f.int_list("disallowed_ports", ()),
        ),
        inject=InjectConfig(
            properties=dict(props),
            ignore_user_roles=inj.str_list("ignore_user_roles", ()),
        ),
    )
