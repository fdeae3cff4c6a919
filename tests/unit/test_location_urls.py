"""Which store a location URL names (hub/locations.py), for RBD stores whose
clusters all use pool `images`: the fsid tells them apart."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from edgesync.errors import BadRequest
from edgesync.hub.locations import store_for_location

IMAGE = "6d0b2d3e-5b7a-4a33-9a57-1f2e3d4c5b6a"
FSIDS = {"central": "11111111-2222-3333-4444-555555555555", "dcn0": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
         "dcn1": "99999999-8888-7777-6666-555555555555"}


@dataclass
class _Site:
    fsid: str | None
    pool: str = "images"
    store_type: str = "rbd"

    def store_properties(self) -> dict[str, Any]:
        return {"pool": self.pool, "fsid": self.fsid}


@dataclass
class _Hub:
    sites: dict[str, _Site] = field(default_factory=lambda: {n: _Site(f) for n, f in FSIDS.items()})


def _match(url: str, hub: _Hub | None = None) -> str:
    return store_for_location(hub or _Hub(), IMAGE, url)  # type: ignore[arg-type]


@pytest.mark.parametrize("store", sorted(FSIDS))
def test_the_fsid_and_pool_pick_the_store(store: str) -> None:
    assert _match(f"rbd://{FSIDS[store]}/images/{IMAGE}/snap") == store
    assert _match(f"rbd://{FSIDS[store].upper()}/images/{IMAGE}/snap") == store  # ceph prints either case


def test_url_quoting_is_undone_as_nova_parses_it() -> None:
    assert _match(f"rbd://{FSIDS['dcn1']}/%69mages/{IMAGE}/snap") == "dcn1"


def test_no_store_with_that_cluster_and_pool_lists_every_store() -> None:
    for url in (f"rbd://{FSIDS['dcn0']}/volumes/{IMAGE}/snap", f"rbd://{'0' * 8}-0000-0000-0000-{'0' * 12}/images/{IMAGE}/snap"):
        with pytest.raises(BadRequest) as caught:
            _match(url)
        for name, fsid in FSIDS.items():
            assert f"{name} (fsid {fsid}, pool images)" in caught.value.message


def test_a_store_whose_fsid_the_hub_cannot_read_is_never_guessed() -> None:
    hub = _Hub()
    hub.sites["dcn1"] = _Site(None)
    with pytest.raises(BadRequest, match="unknown to the hub"):
        _match(f"rbd://{FSIDS['dcn1']}/images/{IMAGE}/snap", hub)


@pytest.mark.parametrize("url, fragment", [
    (f"rbd://{FSIDS['dcn0']}/images/{IMAGE}", "rbd://<fsid>/<pool>/<image>/<snapshot>"),
    (f"rbd://{FSIDS['dcn0']}//{IMAGE}/snap", "rbd://<fsid>/<pool>/<image>/<snapshot>"),
    (f"rbd://{FSIDS['dcn0']}/images/{IMAGE}/snap/x", "rbd://<fsid>/<pool>/<image>/<snapshot>"),
    (f"rbd://{FSIDS['dcn0']}/images/{IMAGE}/base", "protected snapshot 'snap'"),
    (f"rbd://{FSIDS['dcn0']}/images/other-name/snap", "names 'other-name'"),
    (f"swift://container/{IMAGE}", "not swift"),
    ("", "url"),
])
def test_what_no_store_could_hold_is_400_saying_why(url: str, fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        _match(url)
    assert fragment in caught.value.message
