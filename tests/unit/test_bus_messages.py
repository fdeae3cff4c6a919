"""Bus messages: every type round-trips; every malformed payload is an InvalidMessage (a BusError)."""

from __future__ import annotations

import json

import pytest

from edgesync.bus import (
    BusError,
    CheckDeletableCommand,
    CopyCommand,
    DeleteCommand,
    DoneEvent,
    FailedEvent,
    Heartbeat,
    InvalidMessage,
    Inventory,
    Message,
    ProgressEvent,
    SiteRefused,
    SiteState,
    SiteStatus,
    VerifyCommand,
    decode,
    decode_delivery,
    encode,
    topics,
)
from edgesync.bus.messages import MAX_PAYLOAD_BYTES, MESSAGE_TYPES, SCHEMA_VERSION

EXAMPLES: list[Message] = [
    CopyCommand(task_id="t1", image_id="img", size_bytes=1 << 30, os_hash_value="ab" * 64,
                source_url="http://hub:9292/v2/images/img/file"),
    DeleteCommand(task_id="t2", image_id="img"),
    SiteRefused(site="dcn0", availability_zone="dcn1", reason="dcn1 is another site's zone"),
    CheckDeletableCommand(task_id="t4", image_id="img"),
    VerifyCommand(task_id="t5", image_id="img"),
    ProgressEvent(task_id="t1", bytes_done=512, bytes_total=1024),
    DoneEvent(task_id="t1", image_id="img", location_url="rbd://fsid/images/img/snap"),
    DoneEvent(task_id="t2", image_id="img"),
    DoneEvent(task_id="t5", image_id="img", location_url="rbd://fsid/images/img/snap", size_bytes=1 << 30,
              checksum="cd" * 16, os_hash_value="ab" * 64),
    FailedEvent(task_id="t1", reason="store full", retryable=False, code="store_full"),
    Heartbeat(site="dcn0", ts=1_700_000_000.25, in_flight=("t1", "t3"), free_bytes=10 << 30),
    Heartbeat(site="dcn0", ts=1_700_000_000.0),
    Inventory(site="dcn1", image_ids=("a", "b")),
    Inventory(site="dcn1", image_ids=()),
    SiteStatus(site="dcn0", state=SiteState.ONLINE, availability_zone="az-dcn0"),
    SiteStatus(site="dcn0", state=SiteState.OFFLINE),
]


def wire(message: Message, **changes: object) -> bytes:
    """`message` encoded, with fields changed (None deletes one)."""
    data = json.loads(encode(message))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message) -> None:
    assert decode(encode(message)) == message


def test_every_registered_type_has_an_example() -> None:
    assert {type(m) for m in EXAMPLES} == set(MESSAGE_TYPES.values())


def test_the_wire_format_is_flat_json_with_type_schema_and_id() -> None:
    message = DeleteCommand(task_id="t2", image_id="img")
    assert json.loads(encode(message)) == {
        "schema": SCHEMA_VERSION, "type": "delete", "message_id": message.message_id,
        "task_id": "t2", "image_id": "img",
    }


def test_each_message_gets_a_unique_id_and_keeps_it_over_the_wire() -> None:
    a, b = DeleteCommand(task_id="t", image_id="i"), DeleteCommand(task_id="t", image_id="i")
    assert a.message_id != b.message_id
    assert decode(encode(a)).message_id == a.message_id


def test_unknown_fields_are_ignored_so_optional_additions_need_no_new_schema() -> None:
    message = ProgressEvent(task_id="t", bytes_done=1, bytes_total=2)
    assert decode(wire(message, eta_s=12)) == message


def test_a_missing_optional_field_takes_its_default() -> None:
    message = FailedEvent(task_id="t", reason="r", retryable=True)
    assert decode(wire(message, code=None)) == message


def test_decode_accepts_str_and_an_int_for_a_float() -> None:
    message = Heartbeat(site="dcn0", ts=5.0)
    assert decode(wire(message, ts=5).decode()) == message


BAD_PAYLOADS = {
    "not json": (b"{nope", "not UTF-8 JSON"),
    "not utf-8": (b"\xff\xfe{}", "not UTF-8 JSON"),
    "not an object": (b"[1, 2]", "JSON object"),
    "no schema": (b'{"type": "delete"}', "schema"),
    "schema is a bool": (b'{"schema": true, "type": "delete"}', "schema"),
    "newer schema": (json.dumps({"schema": SCHEMA_VERSION + 1, "type": "delete"}).encode(), "newer"),
    "unknown type": (b'{"schema": 1, "type": "reboot", "message_id": "m"}', "unknown message type 'reboot'"),
    "NaN": (b'{"schema": 1, "type": "heartbeat", "message_id": "m", "site": "s", "ts": NaN}', "NaN"),
}


@pytest.mark.parametrize("payload, says", BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_malformed_payloads_are_invalid_messages(payload: bytes, says: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode(payload)
    assert says in caught.value.message
    assert isinstance(caught.value, BusError) and caught.value.retryable is False


BAD_FIELDS = {
    "missing required": ({"task_id": None}, "lacks the required field 'task_id'"),
    "missing message id": ({"message_id": None}, "lacks its message_id"),
    "empty message id": ({"message_id": ""}, "empty message_id"),
    "int as string": ({"bytes_done": "12"}, "progress.bytes_done must be an integer"),
    "bool as int": ({"bytes_done": True}, "progress.bytes_done must be an integer"),
    "negative size": ({"bytes_total": -1}, "must not be negative"),
    "number as string": ({"task_id": 7}, "progress.task_id must be a string"),
}


@pytest.mark.parametrize("changes, says", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_fields_of_the_wrong_type_are_invalid_messages(changes: dict[str, object], says: str) -> None:
    message = ProgressEvent(task_id="t", bytes_done=1, bytes_total=2)
    with pytest.raises(InvalidMessage) as caught:
        decode(wire(message, **changes))
    assert says in caught.value.message


def test_enums_lists_and_bools_are_checked_too() -> None:
    status = SiteStatus(site="dcn0", state=SiteState.ONLINE)
    with pytest.raises(InvalidMessage, match="one of 'online', 'offline'"):
        decode(wire(status, state="asleep"))
    with pytest.raises(InvalidMessage, match=r"inventory.image_ids\[1\] must be a string"):
        decode(wire(Inventory(site="dcn0", image_ids=("a",)), image_ids=["a", 2]))
    with pytest.raises(InvalidMessage, match="must be a list"):
        decode(wire(Inventory(site="dcn0", image_ids=()), image_ids="a,b"))
    with pytest.raises(InvalidMessage, match="true or false"):
        decode(wire(FailedEvent(task_id="t", reason="r", retryable=True), retryable=1))


def test_an_oversized_payload_is_refused_before_parsing() -> None:
    with pytest.raises(InvalidMessage, match="limit"):
        decode(b" " * (MAX_PAYLOAD_BYTES + 1))


# --- a message and its topic -------------------------------------------------------


def test_a_delivery_names_the_site_of_its_topic() -> None:
    event = DoneEvent(task_id="t", image_id="i", location_url="rbd://f/images/i/snap")
    delivery = decode_delivery(str(topics.event("dcn1")), encode(event), retained=False)
    assert delivery.site == "dcn1" and delivery.message == event


def test_a_message_on_the_wrong_channel_is_invalid() -> None:
    command = DeleteCommand(task_id="t", image_id="i")
    with pytest.raises(InvalidMessage, match="delete is a cmd message; it does not belong on edgesync/v1/site/dcn0/event"):
        decode_delivery(str(topics.event("dcn0")), encode(command))


def test_a_message_naming_another_site_than_its_topic_is_invalid() -> None:
    spoof = Heartbeat(site="dcn1", ts=1.0)
    with pytest.raises(InvalidMessage, match="claims site 'dcn1'"):
        decode_delivery(str(topics.event("dcn0")), encode(spoof))


def test_a_foreign_topic_is_invalid() -> None:
    with pytest.raises(InvalidMessage, match="not an edgesync site topic"):
        decode_delivery("other/app/topic", encode(DeleteCommand(task_id="t", image_id="i")))
