"""The message bus between the hub and the site agents (MQTT 5 through Mosquitto).

- `topics`: the topic tree (`edgesync/v1/site/<site>/{cmd,event,status}`) and
  the per-site broker ACL that follows from it.
- `messages`: typed messages and their JSON wire format.
- `mqtt`: `BusClient` (QoS 1, persistent sessions, publish refusals raised)
  and the `run_forever` reconnect loop; the only module importing aiomqtt.
"""

from edgesync.bus import topics
from edgesync.bus.errors import BusError, InvalidMessage
from edgesync.bus.messages import (
    CheckDeletableCommand,
    CopyCommand,
    DeleteCommand,
    Delivery,
    DoneEvent,
    FailedEvent,
    Heartbeat,
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
)
from edgesync.bus.mqtt import BusClient, BusSettings, LastWill, run_forever
from edgesync.bus.topics import Channel, SiteTopic

__all__ = [
    "BusClient", "BusError", "BusSettings", "Channel", "CheckDeletableCommand", "CopyCommand",
    "DeleteCommand", "Delivery", "DoneEvent", "FailedEvent", "Heartbeat", "InvalidMessage", "Inventory", "LastWill",
    "Message", "ProgressEvent", "SiteRefused", "SiteState", "SiteStatus", "SiteTopic", "VerifyCommand", "decode",
    "decode_delivery", "encode", "run_forever", "topics",
]
