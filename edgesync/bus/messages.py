"""The messages hub and agents exchange, and their JSON wire format.

A message is a frozen dataclass; on the wire it is one flat JSON object:

    {"schema": 1, "type": "copy", "message_id": "…", "task_id": "…", …}

- `type` names the class (see `MESSAGE_TYPES`); each class also states the
  channel it travels on, so a command can't arrive as an event or the reverse.
- `schema` is the wire version. A reader refuses a newer schema than its own,
  and ignores fields it doesn't know, so adding an optional field needs no
  new schema; renaming or removing one does.
- `message_id` is unique per message, so consumers can drop the duplicates
  QoS 1 is allowed to deliver. A resend of the same message (an outbox
  retrying) must keep its id.

`decode()` never lets a bad payload escape as anything but `InvalidMessage`
(a `BusError`), so one malformed message can't crash a consumer loop.
`decode_delivery()` also checks the message against the topic it came on: the
right channel, and no claim to be another site than the topic's.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from edgesync.bus.errors import BusError, InvalidMessage
from edgesync.bus.topics import Channel, SiteTopic

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 8 << 20  # an inventory of many thousands of images still fits
_ENVELOPE_KEYS = ("schema", "type", "message_id")

M = TypeVar("M", bound="Message")


def new_message_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, kw_only=True)
class Message:
    """Base of every message. Subclasses register with `@_register`."""

    TYPE: ClassVar[str]
    CHANNEL: ClassVar[Channel]

    message_id: str = field(default_factory=new_message_id)


MESSAGE_TYPES: dict[str, type[Message]] = {}


def _register(type_name: str, channel: Channel) -> typing.Callable[[type[M]], type[M]]:
    def register(cls: type[M]) -> type[M]:
        if type_name in MESSAGE_TYPES:
            raise TypeError(f"message type {type_name!r} registered twice")
        clashes = {f.name for f in dataclasses.fields(cls)} & {"schema", "type"}
        if clashes:
            raise TypeError(f"{cls.__name__} uses envelope keys as fields: {sorted(clashes)}")
        cls.TYPE, cls.CHANNEL = type_name, channel
        MESSAGE_TYPES[type_name] = cls
        return cls

    return register


# --- commands: hub → agent -----------------------------------------------------


@_register("copy", Channel.CMD)
@dataclass(frozen=True, kw_only=True)
class CopyCommand(Message):
    """Copy an image from `source_url` into the site's store as `image_id`."""

    task_id: str
    image_id: str
    size_bytes: int
    os_hash_algo: str = "sha512"
    os_hash_value: str
    source_url: str
    # The BLAKE3 digest of the image's chunk manifest (served beside its data):
    # an agent that knows manifests checks each block against it instead of
    # hashing the whole image, and takes blocks its site holds from local
    # copies. None (an older hub, or no manifest): verify os_hash_value.
    manifest_digest: str | None = None


@_register("delete", Channel.CMD)
@dataclass(frozen=True, kw_only=True)
class DeleteCommand(Message):
    """Remove the site's copy of `image_id`."""

    task_id: str
    image_id: str


@_register("refused", Channel.CMD)
@dataclass(frozen=True, kw_only=True)
class SiteRefused(Message):
    """The hub refuses an agent of `site` whose config disagrees with the hub's.

    It names the availability zone the refused agent announced: an agent
    configured with that zone stops, one configured right (started after the
    fix, receiving this from its persistent session) ignores it.
    """

    site: str
    availability_zone: str
    reason: str


@_register("check_deletable", Channel.CMD)
@dataclass(frozen=True, kw_only=True)
class CheckDeletableCommand(Message):
    """Would a delete of the site's copy of `image_id` succeed now (no COW
    clones depend on it)? Read-only. Answered by Done (yes, or no copy) or by
    Failed with code "in_use". A type of its own rather than a flag on
    DeleteCommand: an older agent drops an unknown type, where it would
    ignore an unknown flag and delete."""

    task_id: str
    image_id: str


@_register("verify", Channel.CMD)
@dataclass(frozen=True, kw_only=True)
class VerifyCommand(Message):
    """Check and hash the site's published copy of `image_id` (RBD image
    `<uuid>` with protected snapshot `snap`), made there by someone else (a
    Nova snapshot whose location was added to a queued image). Read-only:
    answered by a Done carrying the copy's location, size, md5 and sha512,
    or by Failed (code "not_found" if there is no such published copy). A
    type of its own: an older agent drops it rather than misreading it."""

    task_id: str
    image_id: str


# --- events: agent → hub -------------------------------------------------------


@_register("progress", Channel.EVENT)
@dataclass(frozen=True, kw_only=True)
class ProgressEvent(Message):
    task_id: str
    bytes_done: int
    bytes_total: int


@_register("done", Channel.EVENT)
@dataclass(frozen=True, kw_only=True)
class DoneEvent(Message):
    """The task finished; for a copy, `location_url` is the new location (None
    for a delete). For a verify, `location_url` is the copy's location and
    `size_bytes`, `checksum` (md5) and `os_hash_value` (sha512) its digest."""

    task_id: str
    image_id: str
    location_url: str | None = None
    size_bytes: int | None = None
    checksum: str | None = None
    os_hash_value: str | None = None


@_register("failed", Channel.EVENT)
@dataclass(frozen=True, kw_only=True)
class FailedEvent(Message):
    """The task failed. `code` is machine-readable (e.g. "in_use", "store_full")."""

    task_id: str
    reason: str
    retryable: bool
    code: str | None = None


@_register("heartbeat", Channel.EVENT)
@dataclass(frozen=True, kw_only=True)
class Heartbeat(Message):
    site: str
    ts: float  # unix time, seconds
    in_flight: tuple[str, ...] = ()  # task ids the agent is working on
    queued: tuple[str, ...] = ()  # task ids journaled, waiting for a copy slot or the image
    free_bytes: int | None = None


@_register("inventory", Channel.EVENT)
@dataclass(frozen=True, kw_only=True)
class Inventory(Message):
    """Every image the site's store holds complete (with its protected snapshot)."""

    site: str
    image_ids: tuple[str, ...]


# --- status: agent → hub, retained -----------------------------------------------


class SiteState(str, enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"


@_register("status", Channel.STATUS)
@dataclass(frozen=True, kw_only=True)
class SiteStatus(Message):
    """Retained on the site's status topic; the offline one is also its last will."""

    site: str
    state: SiteState
    availability_zone: str | None = None
    # The fsid of the site's Ceph cluster (rbd stores): the hub matches RBD
    # locations to stores by it, and may have no ceph.conf of the site's.
    store_fsid: str | None = None


# --- wire format ---------------------------------------------------------------


def encode(message: Message) -> bytes:
    body = {f.name: _to_json(getattr(message, f.name)) for f in dataclasses.fields(message)}
    wire = {"schema": SCHEMA_VERSION, "type": message.TYPE, **body}
    return json.dumps(wire, separators=(",", ":"), ensure_ascii=False).encode()


def decode(payload: bytes | bytearray | str) -> Message:
    """The message in `payload`, or InvalidMessage saying what is wrong with it."""
    data = _parse_object(payload)
    cls = _message_class(data)
    values: dict[str, Any] = {}
    hints = _type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _coerce(data[f.name], hints[f.name], f"{cls.TYPE}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise InvalidMessage(f"{cls.TYPE} message lacks the required field {f.name!r}")
    if "message_id" not in data:
        raise InvalidMessage(f"{cls.TYPE} message lacks its message_id")
    if not values["message_id"]:
        raise InvalidMessage(f"{cls.TYPE} message has an empty message_id")
    return cls(**values)


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    # Resolving the annotations was most of a message's decoding: a hub of
    # hundreds of sites decodes a heartbeat from each every few seconds.
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


# --- a message and its topic ---------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """A decoded message and the topic it came on.

    Trust `topic.site` rather than any site named in the payload: the broker's
    ACL guarantees the topic; `BusClient` drops payloads that disagree with it.
    """

    topic: SiteTopic
    message: Message
    retained: bool = False

    @property
    def site(self) -> str:
        return self.topic.site


def decode_delivery(topic: str, payload: bytes | str, *, retained: bool = False) -> Delivery:
    """The Delivery for a raw (topic, payload), or InvalidMessage."""
    try:
        site_topic = SiteTopic.parse(topic)
    except BusError as exc:
        raise InvalidMessage(exc.message) from exc
    if not isinstance(payload, (bytes, bytearray, str)):
        raise InvalidMessage(f"payload of type {type(payload).__name__} on {topic}")
    message = decode(payload)
    if message.CHANNEL is not site_topic.channel:
        raise InvalidMessage(
            f"{message.TYPE} is a {message.CHANNEL.value} message; it does not belong on {topic}")
    claimed_site = getattr(message, "site", None)
    if claimed_site is not None and claimed_site != site_topic.site:
        raise InvalidMessage(f"{message.TYPE} claims site {claimed_site!r} on {site_topic.site}'s topic")
    return Delivery(site_topic, message, retained)


def _parse_object(payload: bytes | bytearray | str) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidMessage(f"message of {len(payload)} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")
    try:
        data = json.loads(payload, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidMessage(f"message is not UTF-8 JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidMessage(f"message must be a JSON object, not {type(data).__name__}")
    return data


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which no other JSON reader accepts.
    raise ValueError(f"{name} is not JSON")


def _message_class(data: dict[str, Any]) -> type[Message]:
    schema = data.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise InvalidMessage(f"message has no valid schema version (got {schema!r})")
    if schema > SCHEMA_VERSION:
        raise InvalidMessage(
            f"message schema {schema} is newer than this edgesync understands ({SCHEMA_VERSION}); "
            "upgrade this side")
    type_name = data.get("type")
    cls = MESSAGE_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise InvalidMessage(f"unknown message type {type_name!r} (known: {', '.join(sorted(MESSAGE_TYPES))})")
    return cls


def _to_json(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """`value` checked against (and converted to) the field's annotated type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]  # only `X | None` is used
        return _coerce(value, inner, where)
    if origin is tuple:  # tuple[X, ...]
        if not isinstance(value, list):
            raise _wrong_type(where, "a list", value)
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in annotation)
            raise InvalidMessage(f"{where} must be one of {choices}, got {value!r}") from None
    return _coerce_scalar(value, annotation, where)


def _coerce_scalar(value: Any, annotation: Any, where: str) -> Any:
    if annotation is bool:
        if not isinstance(value, bool):
            raise _wrong_type(where, "true or false", value)
        return value
    if isinstance(value, bool):  # bool is an int in Python, never in our messages
        raise _wrong_type(where, _KIND.get(annotation, str(annotation)), value)
    if annotation is int:
        if not isinstance(value, int):
            raise _wrong_type(where, "an integer", value)
        if value < 0:
            raise InvalidMessage(f"{where} must not be negative, got {value}")
        return value
    if annotation is float:
        if not isinstance(value, (int, float)):
            raise _wrong_type(where, "a number", value)
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise _wrong_type(where, "a string", value)
        return value
    raise TypeError(f"{where}: no wire rule for {annotation!r}")  # a bug in this module


_KIND = {int: "an integer", float: "a number", str: "a string"}


def _wrong_type(where: str, expected: str, value: Any) -> InvalidMessage:
    return InvalidMessage(f"{where} must be {expected}, got {type(value).__name__} {value!r}"[:300])
