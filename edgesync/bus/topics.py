"""The MQTT topic tree, and the broker ACL that follows from it.

    edgesync/v1/site/<site>/cmd      hub → agent: copy, delete, ...
    edgesync/v1/site/<site>/event    agent → hub: progress, done, failed, heartbeat, inventory
    edgesync/v1/site/<site>/status   agent → hub: retained online/offline (also the last will)

Every topic names exactly one site, so the broker can confine a site's
credentials to that site's three topics: it reads its commands and writes its
events and status, and can neither read nor write another site's. The hub
reads and writes everything under `edgesync/`. `v1` versions the tree itself;
a new layout gets a new prefix so old and new agents can share a broker.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from edgesync.bus.errors import BusError

ROOT = "edgesync/v1"
SITE_PREFIX = f"{ROOT}/site"
HUB_ACL_FILTER = "edgesync/#"

# A subset of what site config files allow (letters, digits, '-', '_'), and
# ASCII only: it lands in topics, broker user names and the ACL file, where
# '+', '#', '/', spaces and the like would change the meaning.
_SITE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Channel(str, enum.Enum):
    """What flows on a site's topic, and in which direction."""

    CMD = "cmd"  # hub → agent
    EVENT = "event"  # agent → hub
    STATUS = "status"  # agent → hub, retained


def check_site(site: str) -> str:
    """`site` if it is usable as a topic level and a broker user name."""
    if not isinstance(site, str) or not _SITE_NAME.fullmatch(site):
        raise BusError(
            f"invalid site name {site!r}: use 1-64 ASCII letters, digits, '-' or '_'",
            retryable=False,
        )
    return site


@dataclass(frozen=True)
class SiteTopic:
    """One concrete topic: a site and a channel."""

    site: str
    channel: Channel

    def __post_init__(self) -> None:
        check_site(self.site)
        object.__setattr__(self, "channel", Channel(self.channel))

    def __str__(self) -> str:
        return f"{SITE_PREFIX}/{self.site}/{self.channel.value}"

    @classmethod
    def parse(cls, topic: str) -> SiteTopic:
        """The SiteTopic a received message's topic names, or BusError."""
        prefix, _, rest = topic.rpartition("/")
        head, _, site = prefix.rpartition("/")
        if head != SITE_PREFIX or rest not in {c.value for c in Channel}:
            raise BusError(f"not an edgesync site topic: {topic!r}", retryable=False)
        return cls(check_site(site), Channel(rest))


def cmd(site: str) -> SiteTopic:
    return SiteTopic(site, Channel.CMD)


def event(site: str) -> SiteTopic:
    return SiteTopic(site, Channel.EVENT)


def status(site: str) -> SiteTopic:
    return SiteTopic(site, Channel.STATUS)


def every_site(channel: Channel) -> str:
    """The subscription filter the hub uses to hear `channel` from all sites."""
    return f"{SITE_PREFIX}/+/{Channel(channel).value}"


def site_acl(site: str) -> list[tuple[str, str]]:
    """(access, topic) rules for a site's broker user: its own topics only."""
    return [("read", str(cmd(site))), ("write", str(event(site))), ("write", str(status(site)))]


def hub_acl() -> list[tuple[str, str]]:
    return [("readwrite", HUB_ACL_FILTER)]
