"""The agent's config: the site file plus [agent], and every refusal naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesync.agent.config import load_agent
from edgesync.errors import ConfigError

AGENT = """
[agent]
hub_url = "http://hub.example:9292/"
token_file = "secrets/token"
state_dir = "state"
listen = "127.0.0.1:9393"
tls = {{ plaintext = true }}
{agent_extra}
[agent.broker]
host = "broker.example"
password_file = "secrets/mqtt"
{broker_extra}
"""


def site_file(tmp_path: Path, *, name: str = "dcn0", role: str = "edge", head: str = "",
              agent_extra: str = "", broker_extra: str = "", agent: bool = True) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "token").write_text("site-token\n")
    (secrets / "mqtt").write_text("mqtt-password\n")
    text = f'name = "{name}"\nrole = "{role}"\n{head}\n[store]\ntype = "file"\npath = "store"\n'
    if agent:
        text += AGENT.format(agent_extra=agent_extra, broker_extra=broker_extra)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_agent(path)
    return info.value.message


def test_defaults_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    cfg = load_agent(site_file(tmp_path))
    assert cfg.name == "dcn0" and cfg.site.availability_zone == "dcn0"
    assert cfg.hub_url == "http://hub.example:9292"
    assert cfg.token == "site-token"
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.username) == ("broker.example", 1883, "site-dcn0")
    assert cfg.broker.password == "mqtt-password"
    assert cfg.state_dir == (tmp_path / "state").resolve()
    assert cfg.journal_path.parent == cfg.state_dir
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 9393)
    assert cfg.max_concurrent_copies == 2 and cfg.heartbeat_interval_s == 5
    assert cfg.bandwidth_limit_mbps == 0 and cfg.bandwidth_limit_bytes_per_s == 0


def test_secrets_stay_out_of_reprs(tmp_path: Path) -> None:
    cfg = load_agent(site_file(tmp_path))
    assert "site-token" not in repr(cfg) and "mqtt-password" not in repr(cfg)


def test_every_setting(tmp_path: Path) -> None:
    cfg = load_agent(site_file(
        tmp_path,
        agent_extra="max_concurrent_copies = 4\nbandwidth_limit_mbps = 100\nheartbeat_interval_s = 0.5",
        broker_extra='port = 8883\nusername = "edge-zero"\nclient_id = "agent-a"'))
    assert cfg.max_concurrent_copies == 4 and cfg.heartbeat_interval_s == 0.5
    assert cfg.bandwidth_limit_bytes_per_s == 12_500_000  # megabits, as links are sold
    settings = cfg.broker.settings()
    assert (settings.port, settings.username, settings.identifier) == (8883, "edge-zero", "agent-a")


def test_az_mismatch_stops_the_agent_with_a_clear_message(tmp_path: Path) -> None:
    path = site_file(tmp_path, head='availability_zone = "dcn0"\ncompute_availability_zone = "dcn0"\n'
                                    'storage_availability_zone = "az-storage"')
    message = refusal(path)
    assert message.startswith("the agent can't start: ")
    assert str(path) in message and "one availability zone for Nova and Cinder" in message
    assert "storage_availability_zone='az-storage'" in message


def test_the_central_site_has_no_agent(tmp_path: Path) -> None:
    assert "central site; it has no agent" in refusal(site_file(tmp_path, name="central", role="central"))


def test_a_site_file_without_an_agent_table(tmp_path: Path) -> None:
    path = site_file(tmp_path, agent=False)
    assert refusal(path) == f"{path}: an [agent] table is required to run the agent"


@pytest.mark.parametrize("agent_extra, broker_extra, key, what", [
    ('max_concurrent_copies = 0', "", "max_concurrent_copies", "at least 1"),
    ('max_concurrent_copies = true', "", "max_concurrent_copies", "not a boolean"),
    ('heartbeat_interval_s = 0', "", "heartbeat_interval_s", "more than 0"),
    ('bandwidth_limit_mbps = -1', "", "bandwidth_limit_mbps", "not be negative"),
    ('bandwidth_limit_mbps = "fast"', "", "bandwidth_limit_mbps", "must be"),
    ("", "port = 70000", "port", "1-65535"),
])
def test_bad_values_name_the_table_and_key(tmp_path: Path, agent_extra: str, broker_extra: str,
                                           key: str, what: str) -> None:
    path = site_file(tmp_path, agent_extra=agent_extra, broker_extra=broker_extra)
    message = refusal(path)
    assert message.startswith(f"{path} [agent]") and f"'{key}'" in message and what in message


def test_listen_must_be_host_and_port(tmp_path: Path) -> None:
    path = site_file(tmp_path)
    path.write_text(path.read_text().replace('listen = "127.0.0.1:9393"', 'listen = "9393"'))
    assert "'listen' must be HOST:PORT, got '9393'" in refusal(path)


def test_hub_url_must_be_http(tmp_path: Path) -> None:
    path = site_file(tmp_path)
    path.write_text(path.read_text().replace("http://hub.example:9292/", "hub.example"))
    assert "'hub_url' must be an http:// or https:// URL" in refusal(path)


@pytest.mark.parametrize("key", ["token_file", "password_file"])
def test_unreadable_or_empty_secret_files(tmp_path: Path, key: str) -> None:
    path = site_file(tmp_path)
    secret = tmp_path / "secrets" / ("token" if key == "token_file" else "mqtt")
    secret.unlink()
    assert f"'{key}' names {secret}, which can't be read" in refusal(path)
    secret.write_text("  \n")
    assert f"'{key}' names {secret}, which is empty" in refusal(path)


def test_missing_required_keys(tmp_path: Path) -> None:
    path = site_file(tmp_path)
    path.write_text(path.read_text().replace('host = "broker.example"\n', ""))
    assert refusal(path) == f"{path} [agent] [broker]: 'host' is required"


def test_the_agent_command_refuses_an_az_mismatch_before_starting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgesync.cli import main

    path = site_file(tmp_path, head='compute_availability_zone = "nova-az"')
    assert main(["agent", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgesync: the agent can't start: ") and "one availability zone" in err
    assert not (tmp_path / "state").exists()  # refused before touching anything


def test_agents_sharing_a_process_need_their_own_site_journal_and_address(tmp_path: Path) -> None:
    from dataclasses import replace

    from edgesync.agent.shared_process import check_distinct

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = load_agent(site_file(tmp_path / "a", name="dcn0"))
    b = load_agent(site_file(tmp_path / "b", name="dcn1"))
    b = replace(b, listen_port=9394)
    check_distinct([a, b])  # distinct: fine
    for shared, what in [(replace(b, site=a.site), "site"), (replace(b, state_dir=a.state_dir), "state_dir"),
                         (replace(b, listen_port=a.listen_port), "listen")]:
        with pytest.raises(ConfigError, match=f"need a {what} each"):
            check_distinct([a, shared])
