"""The hub over HTTPS with the lab CA's certificates: clients that trust the CA
get answers, clients given another CA get a clear, immediate refusal (not a
retry loop, not a hang), old protocol versions are refused, and plaintext is
served only when the config says so, with a warning."""

from __future__ import annotations

import logging
import ssl
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edgesync.admin.client import AdminError, Connection, HubClient
from edgesync.config import load_hub
from edgesync.errors import TransferError
from edgesync.hub.app import Hub
from edgesync.lab.certs import LabCA
from edgesync.lab.ports import listening_socket
from edgesync.tls import TlsConfig, http_session
from edgesync.transfer.http import HttpSource

HOST = "127.0.0.1"
IMAGE_ID = "0b8c2a5e-2d7c-4c36-9d6e-3f4b1f0f6a10"


def free_port() -> int:
    with listening_socket(HOST) as sock:
        return int(sock.getsockname()[1])


def hub_files(base: Path, port: int, tls: str) -> Path:
    (base / "sites").mkdir(parents=True)
    (base / "sites" / "central.toml").write_text(
        'name = "central"\nrole = "central"\navailability_zone = "central"\n'
        f'[store]\ntype = "file"\npath = "{base / "central"}"\n')
    hub_toml = base / "hub.toml"
    hub_toml.write_text(f'[hub]\nlisten = "{HOST}:{port}"\nstate_dir = "{base / "state"}"\n'
                        f'sites_dir = "{base / "sites"}"\nauth = "noauth"\n{tls}\n')
    return hub_toml


@pytest.fixture
def cas(tmp_path: Path) -> tuple[LabCA, LabCA]:
    """The CA that signed the hub's certificate, and an unrelated one."""
    return LabCA.create(tmp_path / "ca"), LabCA.create(tmp_path / "other-ca", name="someone else's CA")


@pytest.fixture
async def https_hub(tmp_path: Path, cas: tuple[LabCA, LabCA]) -> AsyncIterator[str]:
    ca, _ = cas
    issued = ca.issue("hub", hosts=(HOST,))
    port = free_port()
    config = load_hub(hub_files(tmp_path / "hub", port, (
        f'[hub.tls]\ncert_file = "{issued.cert_file}"\nkey_file = "{issued.key_file}"\n'
        f'ca_file = "{ca.ca_file}"\n')))
    assert config.public_url == f"https://{HOST}:{port}"
    hub = Hub(config)
    await hub.start()
    try:
        yield config.public_url
    finally:
        await hub.close()


async def test_a_client_trusting_the_ca_is_answered(https_hub: str, cas: tuple[LabCA, LabCA]) -> None:
    async with HubClient(Connection(https_hub, None, cas[0].ca_file)) as hub:
        body = await hub.get("/v2/images")
    assert body["images"] == []


async def test_another_ca_is_a_clear_refusal_at_once(https_hub: str, cas: tuple[LabCA, LabCA]) -> None:
    started = time.monotonic()
    with pytest.raises(AdminError) as refused:
        async with HubClient(Connection(https_hub, None, cas[1].ca_file)) as hub:
            await hub.get("/v2/images")
    assert "certificate" in refused.value.message and "--os-cacert" in refused.value.message
    assert time.monotonic() - started < 5


async def test_the_data_client_does_not_retry_a_certificate_failure(https_hub: str,
                                                                   cas: tuple[LabCA, LabCA]) -> None:
    async with http_session(TlsConfig(ca_file=cas[1].ca_file)) as session:
        source = HttpSource(session, https_hub, IMAGE_ID, token=None, max_attempts=6, backoff_initial_s=2.0)
        started = time.monotonic()
        with pytest.raises(TransferError) as failed:
            await source.size()
    assert not failed.value.retryable and "certificate" in failed.value.message
    assert time.monotonic() - started < 2  # one attempt, no backoff


async def test_plain_http_to_the_https_port_gets_nothing(https_hub: str) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(https_hub.replace("https://", "http://") + "/v2/images") as resp:
                await resp.read()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
async def test_tls_before_1_2_is_refused(https_hub: str, cas: tuple[LabCA, LabCA], version: ssl.TLSVersion) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cas[0].ca_file)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():  # deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(https_hub + "/v2/images") as resp:
                await resp.read()


async def test_tls_1_2_without_forward_secret_aead_is_refused(https_hub: str, cas: tuple[LabCA, LabCA]) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cas[0].ca_file)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384")  # CBC suites
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(https_hub + "/v2/images") as resp:
                await resp.read()


async def test_plaintext_only_when_said_and_then_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from edgesync.errors import ConfigError

    with pytest.raises(ConfigError) as unsaid:
        load_hub(hub_files(tmp_path / "unsaid", free_port(), ""))
    assert "plaintext = true" in unsaid.value.message
    config = load_hub(hub_files(tmp_path / "said", free_port(), "[hub.tls]\nplaintext = true\n"))
    assert config.public_url.startswith("http://")
    hub = Hub(config)
    with caplog.at_level(logging.WARNING, logger="edgesync.hub.app"):
        await hub.start()
        await hub.close()
    assert any("PLAINTEXT" in r.getMessage() for r in caplog.records)
