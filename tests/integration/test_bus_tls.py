"""MQTT over TLS with per-site client certificates, against the session's real Mosquitto.

`tls_broker` is the lab's broker with the lab CA (tests/fixtures/broker.py):
each identity is a certificate whose CN is the user the ACL knows and the
client id the broker gives it. The impostor tests connect the way an attacker
holding one site's certificate would (a plain aiomqtt client asking for a
clean start under someone else's client id); the same scenario run against
the plaintext, password broker shows the takeover the tests would catch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest

from edgesync.bus import BusClient, BusError, Channel, CopyCommand, ProgressEvent, topics
from edgesync.lab import mosquitto
from edgesync.lab.certs import LabCA
from edgesync.tls import client_context
from tests.fixtures.broker import WAIT_S, Inbox, LabBroker, unique_id


def copy_command() -> CopyCommand:
    image_id = str(uuid.uuid4())
    return CopyCommand(task_id=f"task-{image_id[:8]}", image_id=image_id, size_bytes=1 << 20,
                       os_hash_value="ab" * 64, source_url=f"https://hub/v2/images/{image_id}/file")


def progress(tag: str) -> ProgressEvent:
    return ProgressEvent(task_id=unique_id(tag), bytes_done=1, bytes_total=2)


@contextlib.asynccontextmanager
async def impostor(broker: LabBroker, credentials_of: str, client_id: str) -> AsyncIterator[aiomqtt.Client]:
    """An attacker's own client: `credentials_of`'s certificate (or password, on
    the plaintext broker), asking for `client_id` with a clean start."""
    info = broker.info
    if info.tls:
        cert_file, key_file = info.identity(credentials_of)
        auth: dict[str, object] = {"tls_context": client_context(info.ca_file, cert_file=cert_file,
                                                                  key_file=key_file)}
    else:
        auth = {"username": credentials_of, "password": info.password(credentials_of)}
    async with aiomqtt.Client(info.host, info.port, identifier=client_id, clean_start=True,
                              protocol=aiomqtt.ProtocolVersion.V5, timeout=WAIT_S, **auth) as client:  # type: ignore[arg-type]
        await client.subscribe("edgesync/#", qos=1)
        yield client


async def _subscribe_and_leave(bus: BusClient, topic: topics.SiteTopic) -> None:
    async with bus:
        await bus.subscribe(topic)


async def _takeover_attempt(broker: LabBroker, hub_id: str, dcn1_id: str) -> tuple[BaseException | None, bool]:
    """The finding of issue 11: with dcn0's credentials, ask for the hub's and
    dcn1's client ids with a clean start. Returns what happened to the live
    hub's connection (None: it held) and whether dcn1's queued command survived."""
    dcn1 = BusClient(broker.site("dcn1", dcn1_id))
    await _subscribe_and_leave(dcn1, topics.cmd("dcn1"))
    queued = copy_command()
    async with BusClient(broker.hub(hub_id)) as hub, Inbox(hub) as inbox:
        await hub.subscribe(topics.every_site(Channel.EVENT))
        await hub.publish(topics.cmd("dcn1"), queued)  # waits in dcn1's session
        for client_id in (hub_id, f"edgesync-{broker.info.hub_user}", dcn1_id):
            async with impostor(broker, "site-dcn0", client_id):
                pass
        control = progress("after-impostors")
        async with BusClient(broker.site("dcn0", unique_id("agent-dcn0"))) as dcn0:
            await dcn0.publish(topics.event("dcn0"), control)
        try:
            await inbox.wait_for_id(control.message_id)
            hub_lost = None
        except AssertionError as lost:
            hub_lost = lost
    async with dcn1, Inbox(dcn1) as dcn1_inbox:
        try:
            await dcn1_inbox.wait_for_id(queued.message_id, timeout_s=3)
            kept = True
        except TimeoutError:
            kept = False
    return hub_lost, kept



def _client_ctx(broker: LabBroker, *, version: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    """The hub's own certificate (so that it is not why a handshake fails), one
    protocol version and these ciphers."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert broker.info.ca_file is not None
    ctx.load_verify_locations(broker.info.ca_file)
    ctx.load_cert_chain(*broker.info.identity("hub"))
    ctx.set_ciphers(ciphers)
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


async def _handshake(broker: LabBroker, ctx: ssl.SSLContext) -> None:
    _, writer = await asyncio.wait_for(asyncio.open_connection(broker.info.host, broker.info.port, ssl=ctx), WAIT_S)
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


async def test_the_broker_takes_tls_1_2_only_with_forward_secret_aead_ciphers(tls_broker: LabBroker) -> None:
    await _handshake(tls_broker, _client_ctx(tls_broker, version=ssl.TLSVersion.TLSv1_2,
                                             ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))  # the control
    refused = {
        "TLS 1.1": _client_ctx(tls_broker, version=ssl.TLSVersion.TLSv1_1, ciphers="ALL:@SECLEVEL=0"),
        "TLS 1.2 CBC": _client_ctx(tls_broker, version=ssl.TLSVersion.TLSv1_2,
                                   ciphers="ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384"),
    }
    for case, ctx in refused.items():
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _handshake(tls_broker, ctx)
            pytest.fail(f"{case} was accepted")


# --- identities ------------------------------------------------------------------


async def test_each_identity_connects_with_its_certificate_and_the_acl_follows_its_cn(
        tls_broker: LabBroker) -> None:
    command, event, forged = copy_command(), progress("dcn0"), progress("forged")
    async with BusClient(tls_broker.hub("hub")) as hub, Inbox(hub) as hub_inbox:
        await hub.subscribe(topics.every_site(Channel.EVENT))
        async with BusClient(tls_broker.site("dcn0", "agent")) as dcn0, Inbox(dcn0) as dcn0_inbox:
            await dcn0.subscribe(topics.cmd("dcn0"))
            await hub.publish(topics.cmd("dcn0"), command)
            assert (await dcn0_inbox.wait_for_id(command.message_id)).message == command
            with pytest.raises(BusError, match="refused"):
                await dcn0.publish(topics.event("dcn1"), forged)  # dcn0's CN has dcn0's topics only
            await dcn0.publish(topics.event("dcn0"), event)
        delivery = await hub_inbox.wait_for_id(event.message_id)
    assert delivery.site == "dcn0" and forged.message_id not in hub_inbox.message_ids()
    assert "password_file" not in tls_broker.info.conf.read_text()  # no password anywhere
    assert not (tls_broker.dir / "passwd").exists()


async def test_a_client_without_a_certificate_from_the_ca_is_refused_at_once(tls_broker: LabBroker,
                                                                             tmp_path: Path) -> None:
    hub = tls_broker.hub("hub")
    other_ca = LabCA.create(tmp_path / "other-ca")
    other = other_ca.issue("hub", client=True)  # the hub's CN, from another CA
    refused = {
        "no certificate": replace(hub, cert_file=None, key_file=None),
        "another CA's certificate": replace(hub, cert_file=other.cert_file, key_file=other.key_file),
        "a broker this CA didn't sign": replace(hub, ca_file=other_ca.ca_file),
    }
    for case, settings in refused.items():
        with pytest.raises(BusError) as caught:
            async with asyncio.timeout(settings.timeout_s / 2), BusClient(settings):  # no waiting out a timeout
                pass
        assert not caught.value.retryable and "certificate" in caught.value.message, case
    with pytest.raises(BusError):  # plain MQTT on the TLS port, with a password
        async with asyncio.timeout(hub.timeout_s / 2), BusClient(replace(hub, ca_file=None, password="guess")):
            pass
    async with BusClient(hub):  # the control: the hub's own certificate works
        pass


async def test_a_sites_certificate_cannot_take_over_the_hubs_or_another_sites_client_id(
        tls_broker: LabBroker) -> None:
    hub_lost, kept = await _takeover_attempt(tls_broker, "hub", "site-dcn1")
    assert hub_lost is None, f"the hub's connection was taken over: {hub_lost}"
    assert kept, "a clean-start impostor wiped dcn1's queued command"


async def test_the_same_attack_takes_over_on_the_plaintext_password_listener(broker: LabBroker) -> None:
    """The control: without certificate identities, the attack of issue 11 works
    (which is why plaintext is only by explicit configuration)."""
    hub_lost, kept = await _takeover_attempt(broker, unique_id("hub"), unique_id("agent-dcn1"))
    assert hub_lost is not None and not kept


async def test_an_identity_added_later_has_the_rights_of_the_one_it_copies(tls_broker: LabBroker) -> None:
    observer = await tls_broker.add_identity("hub")
    event = progress("seen-by-observer")
    async with BusClient(tls_broker.hub("hub")) as hub, Inbox(hub) as hub_inbox:  # the "daemon"
        await hub.subscribe(topics.every_site(Channel.EVENT))
        async with BusClient(tls_broker.settings(observer, "observer")) as second, Inbox(second) as inbox:
            await second.subscribe(topics.every_site(Channel.EVENT))
            async with BusClient(tls_broker.site("dcn1", "agent")) as dcn1:
                await dcn1.publish(topics.event("dcn1"), event)
            await inbox.wait_for_id(event.message_id)
        await hub_inbox.wait_for_id(event.message_id)  # both connected at once: neither evicted
    with pytest.raises(mosquitto.LabError, match="already has"):
        await mosquitto.add_identity(tls_broker.dir, observer, like="hub")
