"""The lab's config files: written with a TOML writer, read back by the
daemons' own loaders with every value intact, whatever the lab's path holds."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from edgesync.agent.config import load_agent
from edgesync.config import load_hub
from edgesync.lab import configs, lab_tls
from edgesync.lab.lab_tls import LabTls
from edgesync.lab.procs import write_private


@dataclass(frozen=True)
class FakeBroker:
    host: str = "127.0.0.1"
    port: int = 21883
    hub_user: str = "hub"


@dataclass(frozen=True)
class FakeCluster:
    conf: Path
    keyring: Path
    pool: str = "images"
    user: str = "edgesync-dcn0"


def identity(tls: LabTls, user: str) -> tuple[Path, Path]:
    issued = tls.ca.issue(user, client=True)
    return issued.cert_file, issued.key_file


def write_lab(directory: Path, *, store: str = "file", tls: LabTls | None = None) -> tuple[Path, dict[str, Path]]:
    (directory / "sites").mkdir(parents=True)
    (directory / "secrets").mkdir()
    for user in ("hub", "site-dcn0"):
        write_private(directory / "secrets" / f"{user}.mqtt", f"pw-{user}\n")
    cluster = FakeCluster(conf=directory / "ceph" / "ceph.conf", keyring=directory / "ceph" / "k.keyring")
    agent = configs.agent_table(directory, "dcn0", hub_url="http://127.0.0.1:21000", listen="127.0.0.1:21001",
                                broker=FakeBroker(), broker_user="site-dcn0", tls=tls.agents["dcn0"] if tls else None,
                                broker_identity=tls.identity(identity(tls, "site-dcn0")) if tls else None)
    files = {
        "central": configs.write_site_file(directory, "central", central=True, store=store,
                                           cluster=cluster if store == "rbd" else None, agent=None),
        "dcn0": configs.write_site_file(directory, "dcn0", central=False, store=store,
                                        cluster=cluster if store == "rbd" else None, agent=agent),
    }
    hub = configs.write_hub_files(directory, listen="127.0.0.1:21000", admin_token="adm", member_token="mem",
                                  broker=FakeBroker(), edges=["dcn0"], offline_deadline_s=12.5,
                                  tls=tls.hub if tls else None,
                                  broker_identity=tls.identity(identity(tls, "hub")) if tls else None)
    return hub, files


def test_paths_that_need_quoting_survive_every_file(tmp_path: Path) -> None:
    directory = tmp_path / 'a "quoted" dir\\with back\\slashes, ünïcode\tand a tab'
    hub_path, files = write_lab(directory)

    hub = load_hub(hub_path)
    assert hub.state_dir == directory / "hub-state"
    assert (hub.host, hub.port) == ("127.0.0.1", 21000)
    central = next(s for s in hub.sites if s.name == "central")
    assert central.store.path == directory / "stores" / "central"
    agent = load_agent(files["dcn0"])
    assert agent.site.store.path == directory / "stores" / "dcn0"
    assert (agent.listen_host, agent.listen_port) == ("127.0.0.1", 21001)
    assert agent.token == (directory / "secrets" / "dcn0.token").read_text().strip()
    assert agent.state_dir == directory / "agents" / "dcn0"
    assert agent.broker.password == "pw-site-dcn0"


def test_the_hub_knows_each_agent_by_the_token_in_its_site_file(tmp_path: Path) -> None:
    hub_path, files = write_lab(tmp_path / "lab")

    tokens_file = tmp_path / "lab" / "tokens.toml"
    tokens = tomllib.loads(tokens_file.read_text())["tokens"]
    agent_token = Path(tomllib.loads(files["dcn0"].read_text())["agent"]["token_file"]).read_text().strip()
    assert tokens[agent_token] == {"user": "agent-dcn0", "project": "edgesync-agents", "roles": ["agent"]}
    assert tokens["adm"]["roles"] == ["admin"] and tokens["mem"]["roles"] == ["member"]
    assert tokens_file.stat().st_mode & 0o077 == 0
    hub = tomllib.loads(hub_path.read_text())
    assert hub["agents"] == {"stale_after_s": configs.STALE_AFTER_S, "offline_deadline_s": 12.5}
    assert hub["bus"]["password_file"] == str(tmp_path / "lab" / "secrets" / "hub.mqtt")


def test_an_rbd_site_names_its_cluster_and_user(tmp_path: Path) -> None:
    _, files = write_lab(tmp_path / "lab", store="rbd")

    store = tomllib.loads(files["dcn0"].read_text())["store"]
    assert store == {"type": "rbd", "description": "dcn0 site store (rbd)",
                     "ceph_conf": str(tmp_path / "lab" / "ceph" / "ceph.conf"), "pool": "images",
                     "user": "edgesync-dcn0", "keyring": str(tmp_path / "lab" / "ceph" / "k.keyring")}


def test_the_files_holding_tokens_and_keys_are_owner_only(tmp_path: Path) -> None:
    from edgesync.lab.daemons import LAB_FILE, save_info

    write_lab(tmp_path)
    (tmp_path / LAB_FILE).write_text("{}")  # one left world-readable from before
    (tmp_path / LAB_FILE).chmod(0o644)
    save_info(tmp_path, {"admin_token": "adm"})
    write_private(tmp_path / "secrets" / "old.key", "a")
    (tmp_path / "secrets" / "old.key").chmod(0o644)
    write_private(tmp_path / "secrets" / "old.key", "b")  # rewritten: private again
    private = [tmp_path / LAB_FILE, tmp_path / "tokens.toml", *(tmp_path / "secrets").iterdir()]
    assert len(private) >= 5
    for path in private:
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_a_tls_lab_names_each_daemons_certificate_and_the_ca_and_no_password(tmp_path: Path) -> None:
    directory = tmp_path / "lab"
    tls = lab_tls.make(directory, ["127.0.0.1"], {"dcn0": "127.0.0.1"})
    hub_path, files = write_lab(directory, tls=tls)

    hub = load_hub(hub_path)
    assert hub.tls.serves_tls and hub.tls.cert_file == tls.hub.cert_file and hub.tls.ca_file == tls.ca_file
    assert hub.bus is not None and hub.bus.password_file is None
    assert (hub.bus.ca_file, hub.bus.cert_file) == (tls.ca_file, directory / "tls" / "hub.crt")
    assert next(s for s in hub.sites if s.name == "dcn0").agent_url == "https://127.0.0.1:21001"
    agent = load_agent(files["dcn0"])
    assert agent.tls.serves_tls and agent.tls.ca_file == tls.ca_file
    settings = agent.broker.settings()
    assert settings.tls and settings.password is None
    assert settings.cert_file == directory / "tls" / "site-dcn0.crt"
    assert "password_file" not in files["dcn0"].read_text() + hub_path.read_text()
