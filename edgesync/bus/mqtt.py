"""The MQTT connection: the only module that imports aiomqtt (and paho under it).

`BusClient` speaks MQTT 5 with QoS 1 and a persistent session
(`clean_start=False` plus a session expiry), so messages published to a client
while it is away — even across a broker restart — are delivered when it comes
back under the same client id. aiomqtt errors are translated into `BusError`
here: connection trouble is retryable; refused credentials, refused
subscriptions and refused publishes are not.

`run_forever()` is aiomqtt's documented reconnect loop (`while True: try:
async with client: … except MqttError: sleep`) with capped, jittered backoff.

Publish refusals. Mosquitto drops a publish its ACL denies; over MQTT 5 it
says so in the PUBACK (reason 0x87), but aiomqtt 2.5's `publish()` neither
raises nor returns the reason code or the packet id. Paho does hand the reason
code to its `on_publish` callback, so `_PubackReasons` wraps paho's
`on_publish` and `publish` to keep each refused packet id and learn which
packet id a publish got. That needs the paho client behind aiomqtt, which
aiomqtt keeps in `_client`: the one private attribute this module touches.
The integration tests publish on a forbidden topic and expect a refusal, so
an aiomqtt upgrade that changes this fails there, not silently.

Identities. Over TLS the client certificate is the identity: a Mosquitto
listener with `use_identity_as_username` and `use_username_as_clientid`
takes its CN as the user name and the client id, so `username` and
`client_id` here only name the connection in our logs. A broker that refuses
the certificate (none, or not from its CA) closes the connection with a TLS
alert before CONNACK; aiomqtt 2.5 would wait out its whole timeout and say
"timed out", so `_EarlyClose` watches paho's log and disconnect callback and
ends the wait at once with the alert's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import aiomqtt
from aiomqtt.exceptions import MqttConnectError  # not re-exported by the package
from paho.mqtt import client as paho_client
from paho.mqtt.client import CallbackOnPublish_v2
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgesync.backoff import Backoff
from edgesync.bus import messages
from edgesync.bus.errors import BusError
from edgesync.bus.messages import Delivery, Message, decode_delivery
from edgesync.bus.topics import SiteTopic
from edgesync.tls import client_context

log = logging.getLogger("edgesync.bus")

T = TypeVar("T")
QOS = 1
DEFAULT_SESSION_EXPIRY_S = 7 * 24 * 3600
# CONNACK reasons that retrying with the same settings can't fix (MQTT 5 §3.2.2.2).
_FATAL_CONNACK = {
    0x81: "the broker found our CONNECT malformed",
    0x82: "protocol error",
    0x84: "the broker does not speak MQTT 5",
    0x85: "the broker refused the client id",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x8A: "this client is banned",
    0x8C: "bad authentication method",
}
_CREDENTIAL_REFUSALS = {0x86, 0x87}


@dataclass(frozen=True)
class BusSettings:
    """Where and as whom to connect. Inert data, resolved once."""

    host: str
    port: int
    username: str
    password: str | None
    # Stable per identity: the broker keeps the session (subscriptions and
    # queued messages) under this id. Two live clients with one id evict
    # each other, so a second connection of one identity needs its own id.
    client_id: str | None = None
    session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S
    keepalive_s: int = 30
    timeout_s: float = 10.0
    # TLS: ca_file verifies the broker; cert_file/key_file are this client's
    # identity (Mosquitto takes the certificate's CN as the user name, so no
    # password crosses the network). No ca_file: plaintext MQTT.
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    @property
    def identifier(self) -> str:
        return self.client_id or f"edgesync-{self.username}"


@dataclass(frozen=True)
class LastWill:
    """What the broker publishes (retained, QoS 1) if the connection dies uncleanly.

    A clean disconnect discards the will, so an agent that stops on purpose
    publishes its offline status itself first; and it publishes a retained
    online status after each connect, replacing the will a previous crash left.
    """

    topic: SiteTopic
    message: Message


class BusClient:
    """An MQTT 5 connection as an async context manager; reusable, not reentrant.

        async with BusClient(settings) as bus:
            await bus.subscribe(topics.cmd("dcn0"))
            async for delivery in bus.messages():
                ...
    """

    def __init__(self, settings: BusSettings, *, will: LastWill | None = None) -> None:
        if will is not None:
            _check_fits(will.topic, will.message)
        self.settings = settings
        self.will = will
        self.invalid_messages = 0  # payloads dropped because they didn't decode or fit their topic
        self._client: aiomqtt.Client | None = None
        self._pubacks: _PubackReasons | None = None

    # --- connection --------------------------------------------------------------

    async def __aenter__(self) -> BusClient:
        if self._client is not None:
            raise BusError("this BusClient is already connected", retryable=False)
        client = self._new_aiomqtt_client()
        pubacks = _PubackReasons(client)
        early_close = _EarlyClose(client)
        try:
            await early_close.connect()
        except aiomqtt.MqttError as exc:
            raise self._connect_error(exc) from exc
        self._client, self._pubacks = client, pubacks
        log.debug("connected to %s:%s as %s", self.settings.host, self.settings.port, self.settings.identifier)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        client, self._client, self._pubacks = self._client, None, None
        if client is None:
            return
        try:
            await client.__aexit__(exc_type, exc, tb)
        except aiomqtt.MqttError as exit_exc:
            if exc is None:  # don't let a failed goodbye hide the real error
                raise BusError(f"could not disconnect cleanly: {exit_exc}") from exit_exc
            log.debug("disconnect after an error also failed: %s", exit_exc)

    def _new_aiomqtt_client(self) -> aiomqtt.Client:
        s = self.settings
        connect_properties = Properties(PacketTypes.CONNECT)
        # Without a session expiry an MQTT 5 session ends with the connection,
        # whatever clean_start says, and messages sent meanwhile are lost.
        connect_properties.SessionExpiryInterval = s.session_expiry_s
        tls_context = client_context(s.ca_file, cert_file=s.cert_file, key_file=s.key_file) if s.tls else None
        if tls_context is not None:
            tls_context.sslsocket_class = _SocketClosedOnFailedHandshake
        return aiomqtt.Client(
            s.host, s.port, username=s.username, password=s.password, tls_context=tls_context,
            identifier=s.identifier, protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False, properties=connect_properties,
            keepalive=s.keepalive_s, timeout=s.timeout_s, will=self._aiomqtt_will(),
        )

    def _aiomqtt_will(self) -> aiomqtt.Will | None:
        if self.will is None:
            return None
        return aiomqtt.Will(str(self.will.topic), messages.encode(self.will.message), qos=QOS, retain=True)

    def _connect_error(self, exc: aiomqtt.MqttError) -> BusError:
        where = f"{self.settings.host}:{self.settings.port}"
        code = _reason_value(getattr(exc, "rc", None))
        if isinstance(exc, MqttConnectError) and code in _FATAL_CONNACK:
            what = _FATAL_CONNACK[code]
            if code in _CREDENTIAL_REFUSALS:
                what = f"it refused the credentials of user {self.settings.username!r} ({code})"
            return BusError(f"broker {where} refused the connection: {what}", retryable=False)
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):  # aiomqtt keeps only the text of ssl's error
            return BusError(f"the broker at {where} is not who it should be: its certificate did not "
                            f"verify against ca_file {self.settings.ca_file}: {exc}", retryable=False)
        return BusError(f"cannot connect to the broker at {where}: {exc}", retryable=True)

    def _connected(self) -> tuple[aiomqtt.Client, _PubackReasons]:
        if self._client is None or self._pubacks is None:
            raise BusError("not connected: use `async with BusClient(...)`", retryable=False)
        return self._client, self._pubacks

    # --- traffic -----------------------------------------------------------------

    async def publish(self, topic: SiteTopic, message: Message, *, retain: bool = False) -> None:
        """Publish at QoS 1 and return once the broker accepted it.

        Raises BusError(retryable=False) if the broker refused it (e.g. the ACL
        forbids this user the topic) and BusError(retryable=True) if the
        connection failed before the broker acknowledged it.
        """
        _check_fits(topic, message)
        client, pubacks = self._connected()
        with pubacks.tracking() as outcome:
            try:
                await client.publish(str(topic), messages.encode(message), qos=QOS, retain=retain)
            except aiomqtt.MqttError as exc:
                raise BusError(f"publish of {message.TYPE} to {topic} failed: {exc}") from exc
        if outcome.refusal is not None:
            raise BusError(
                f"the broker refused {message.TYPE} on {topic} for user {self.settings.username!r}: "
                f"{outcome.refusal} ({outcome.refusal.value})", retryable=False)

    async def subscribe(self, topic_filter: SiteTopic | str) -> None:
        """Subscribe at QoS 1. The subscription lives in the persistent session.

        A filter the ACL forbids is still granted by Mosquitto and simply
        delivers nothing; a refusal the broker does report raises BusError.
        """
        client, _ = self._connected()
        try:
            granted = await client.subscribe(str(topic_filter), qos=QOS)
        except aiomqtt.MqttError as exc:
            raise BusError(f"subscribe to {topic_filter} failed: {exc}") from exc
        refused = [rc for rc in granted if isinstance(rc, ReasonCode) and rc.is_failure]
        if refused:
            raise BusError(f"the broker refused the subscription to {topic_filter}: {refused[0]}",
                           retryable=False)

    async def messages(self) -> AsyncIterator[Delivery]:
        """Decoded messages as they arrive, until the connection drops (BusError).

        A payload that doesn't decode, or doesn't belong on its topic, is
        logged, counted in `invalid_messages` and skipped: one bad message
        must not stop a consumer.
        """
        client, _ = self._connected()
        try:
            async for raw in client.messages:
                delivery = self._decode(str(raw.topic), raw.payload, bool(raw.retain))
                if delivery is not None:
                    yield delivery
        except aiomqtt.MqttError as exc:
            raise BusError(f"lost the connection to the broker: {exc}") from exc

    def _decode(self, topic: str, payload: Any, retained: bool) -> Delivery | None:
        try:
            return decode_delivery(topic, payload, retained=retained)
        except BusError as exc:
            self.invalid_messages += 1
            log.warning("dropped a message on %s: %s", topic, exc.message)
            return None


def _check_fits(topic: SiteTopic, message: Message) -> None:
    if message.CHANNEL is not topic.channel:
        raise BusError(f"{message.TYPE} travels on {message.CHANNEL.value} topics, not on {topic}",
                       retryable=False)


def _reason_value(rc: Any) -> int | None:
    if isinstance(rc, ReasonCode):
        return rc.value
    return rc if isinstance(rc, int) else None


# --- publish refusals ------------------------------------------------------------


@dataclass
class _PublishOutcome:
    mid: int | None = None
    refusal: ReasonCode | None = None


# The publish in progress in the current task; aiomqtt calls paho's publish()
# synchronously inside our `await client.publish(...)`, so it runs in our
# task's context and concurrent publishes in other tasks don't mix.
_current_publish: contextvars.ContextVar[_PublishOutcome | None] = contextvars.ContextVar(
    "edgesync_bus_current_publish", default=None)


class _PubackReasons:
    """Learns the PUBACK reason code of each publish (see the module docstring)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        paho = client._client  # private: aiomqtt 2 has no public way to the PUBACK reason code
        aiomqtt_on_publish = paho.on_publish
        if aiomqtt_on_publish is None:
            raise BusError("aiomqtt set no on_publish callback on paho (check the aiomqtt version)", retryable=False)
        self._refused: dict[int, ReasonCode] = {}
        self._paho_publish = paho.publish
        # aiomqtt builds its paho client with CallbackAPIVersion.VERSION2 (paho casts the same way).
        self._aiomqtt_on_publish = cast(CallbackOnPublish_v2, aiomqtt_on_publish)
        # Wrapping this one instance's publish() is the point (see the module docstring).
        paho.publish = self._publish  # type: ignore[method-assign]
        paho.on_publish = self._on_publish

    @contextlib.contextmanager
    def tracking(self) -> Iterator[_PublishOutcome]:
        """Around one aiomqtt publish: fills in its packet id and, after, any refusal."""
        outcome = _PublishOutcome()
        token = _current_publish.set(outcome)
        try:
            yield outcome
        finally:
            _current_publish.reset(token)
        if outcome.mid is None:
            raise BusError("cannot tell whether the broker accepted the publish: aiomqtt no "
                           "longer calls paho's publish() (check the aiomqtt version)", retryable=False)
        outcome.refusal = self._refused.pop(outcome.mid, None)

    def _publish(self, *args: Any, **kwargs: Any) -> Any:
        info = self._paho_publish(*args, **kwargs)
        self._refused.pop(info.mid, None)  # packet ids wrap around; forget an old refusal
        outcome = _current_publish.get()
        if outcome is not None:
            outcome.mid = info.mid
        return info

    def _on_publish(self, client: paho_client.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Properties) -> None:
        # Runs before aiomqtt's callback wakes the publisher, so the refusal is
        # recorded by the time `tracking()` looks for it.
        if reason_code.is_failure:
            self._refused[mid] = reason_code
        self._aiomqtt_on_publish(client, userdata, mid, reason_code, properties)


class _SocketClosedOnFailedHandshake(ssl.SSLSocket):
    """paho 2.2 leaves the socket open when the TLS handshake fails (a broker
    whose certificate doesn't verify): close it there, not at garbage collection."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


# --- connections closed before CONNACK ---------------------------------------------


class _EarlyClose:
    """Ends the wait for CONNACK when paho loses the connection first (see the module docstring)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        paho = client._client  # private, as in _PubackReasons
        self._closed = asyncio.Event()
        self._errors: list[str] = []
        self._connack = False
        self._aiomqtt_on_disconnect = paho.on_disconnect
        self._aiomqtt_on_connect = paho.on_connect
        self._loop = asyncio.get_running_loop()
        paho.on_log = self._on_log
        paho.on_disconnect = self._on_disconnect
        paho.on_connect = self._on_connect

    async def connect(self) -> None:
        """aiomqtt's connect, or BusError at once if the connection closed before CONNACK."""
        entering = asyncio.ensure_future(self._client.__aenter__())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({entering, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if entering.done():
            entering.result()
            return
        entering.cancel()  # this aiomqtt client is dropped: BusClient makes a new one per connection
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await entering
        why = self._errors[-1] if self._errors else "no reason given"
        # A TLS alert is the broker refusing our certificate: retrying with the same files can't help.
        alert = "alert" in why.lower()
        hint = (" (a TLS alert: the broker wants a client certificate its CA issued; check cert_file, "
                "key_file and ca_file)") if alert else ""
        raise BusError(f"the broker closed the connection before accepting it: {why}{hint}",
                       retryable=not alert)

    def _on_log(self, client: paho_client.Client, userdata: Any, level: int, buf: str) -> None:
        if level == paho_client.MQTT_LOG_ERR and not self._connack:
            self._errors.append(buf)

    def _on_connect(self, *args: Any) -> None:
        self._connack = True
        if self._aiomqtt_on_connect is not None:
            self._aiomqtt_on_connect(*args)

    def _on_disconnect(self, *args: Any) -> None:
        if not self._connack:
            self._loop.call_soon_threadsafe(self._closed.set)
        if self._aiomqtt_on_disconnect is not None:
            self._aiomqtt_on_disconnect(*args)


# --- reconnect loop --------------------------------------------------------------


async def run_forever(
    client: BusClient,
    work: Callable[[BusClient], Awaitable[T]],
    *,
    backoff: Backoff | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> T:
    """Connect, run `work(client)`, and on a retryable BusError reconnect and run it again.

    Returns what `work` returns (it may run forever). Non-retryable errors
    (bad credentials, a refused publish) propagate at once. The backoff
    restarts from its initial delay after every successful connection; the
    delays are capped and jittered. `work` must be safe to run again from the
    start: subscribe at its top (re-subscribing is harmless), and rely on the
    persistent session for what arrived while disconnected.
    """
    backoff = backoff or Backoff()
    sleep = sleep or asyncio.sleep
    while True:
        try:
            async with client:
                backoff.reset()
                return await work(client)
        except BusError as exc:
            if not exc.retryable:
                raise
            delay_s = backoff.next_delay_s()
            log.warning("bus: %s; reconnecting in %.1f s", exc.message, delay_s)
            await sleep(delay_s)


__all__ = ["BusClient", "BusSettings", "LastWill", "run_forever"]
