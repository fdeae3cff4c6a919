"""The topic tree and the ACL derived from it."""

from __future__ import annotations

import pytest

from edgesync.bus import BusError, Channel, SiteTopic, topics


def test_each_site_has_a_command_an_event_and_a_status_topic() -> None:
    assert str(topics.cmd("dcn0")) == "edgesync/v1/site/dcn0/cmd"
    assert str(topics.event("dcn0")) == "edgesync/v1/site/dcn0/event"
    assert str(topics.status("dcn0")) == "edgesync/v1/site/dcn0/status"
    assert topics.every_site(Channel.EVENT) == "edgesync/v1/site/+/event"


@pytest.mark.parametrize("topic", [topics.cmd("dcn-1_a"), topics.event("X9"), topics.status("central")])
def test_topics_parse_back(topic: SiteTopic) -> None:
    assert SiteTopic.parse(str(topic)) == topic


@pytest.mark.parametrize("name", ["", "a/b", "+", "#", "dcn#", "dcn+", "two words", "dcn0\n", "ünï", "x" * 65])
def test_site_names_that_would_change_a_topic_or_acl_are_refused(name: str) -> None:
    with pytest.raises(BusError, match="invalid site name"):
        topics.cmd(name)


@pytest.mark.parametrize("topic", [
    "edgesync/v1/site/dcn0/cmd/extra", "edgesync/v1/site/dcn0/other", "edgesync/v2/site/dcn0/cmd",
    "edgesync/v1/site/+/cmd", "edgesync/v1/site//cmd", "edgesync/v1/dcn0/cmd",
])
def test_topics_outside_the_tree_do_not_parse(topic: str) -> None:
    with pytest.raises(BusError):
        SiteTopic.parse(topic)


def test_a_site_may_read_its_commands_and_write_its_events_and_status_only() -> None:
    assert topics.site_acl("dcn0") == [
        ("read", "edgesync/v1/site/dcn0/cmd"),
        ("write", "edgesync/v1/site/dcn0/event"),
        ("write", "edgesync/v1/site/dcn0/status"),
    ]
    assert topics.hub_acl() == [("readwrite", "edgesync/#")]
