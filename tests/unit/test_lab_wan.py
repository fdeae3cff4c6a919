"""`lab up --wan`: which site gets which rate, and the names and addresses
each site gets (all inside the lab's own namespaces)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesync.lab import wan
from edgesync.lab.errors import LabError

SITES = ["central", "dcn0", "dcn1"]


def test_one_rate_shapes_every_edge_and_leaves_central_unshaped() -> None:
    assert wan.parse_rates("200mbit", SITES) == {"central": None, "dcn0": "200mbit", "dcn1": "200mbit"}


def test_sites_named_get_their_own_rate_central_too() -> None:
    assert wan.parse_rates("200mbit,dcn1=50mbit,central=1gbit", SITES) == {
        "central": "1gbit", "dcn0": "200mbit", "dcn1": "50mbit"}
    assert wan.parse_rates("dcn0=500kbit", SITES) == {"central": None, "dcn0": "500kbit", "dcn1": None}


@pytest.mark.parametrize(("spec", "message"), [
    ("fast", "'fast' is not a rate"),
    ("200", "'200' is not a rate"),
    ("200mbit,dcn9=1mbit", "no site 'dcn9' in this lab"),
    ("dcn0=", "'' is not a rate"),
])
def test_a_bad_rate_says_what_to_write(spec: str, message: str) -> None:
    with pytest.raises(LabError, match=message):
        wan.parse_rates(spec, SITES)


def test_each_site_gets_a_namespace_of_the_lab_and_a_private_address() -> None:
    sites = [f"s{i}" for i in range(300)]
    links = wan.plan(Path("/labs/a"), dict.fromkeys(sites, "10mbit"))
    other = wan.plan(Path("/labs/b"), dict.fromkeys(sites, "10mbit"))

    assert len({link.netns for link in links.values()}) == len({link.address for link in links.values()}) == 300
    assert all(link.address.startswith("10.77.") and not link.address.endswith(".0") for link in links.values())
    assert {link.netns for link in links.values()}.isdisjoint(link.netns for link in other.values())
    assert wan.switch_netns(links) != wan.switch_netns(other)
    assert links["s0"].address == "10.77.0.1" and links["s250"].address == "10.77.1.1"
