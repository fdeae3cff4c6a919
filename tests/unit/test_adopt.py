"""Adoption's parts without a Glance: the record parser, the copy check on a
real file store, the catalog write, the sample choice."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from edgesync.adopt.check import CopyMismatch, CopyMissing, check_copy
from edgesync.adopt.record import parse_image, parse_members
from edgesync.adopt.run import sampled
from edgesync.catalog import AdoptedCopy, Catalog
from edgesync.errors import BadRequest
from edgesync.hub.sites.local import LocalSite
from edgesync.model import ImageStatus, Visibility
from edgesync.stores.file import FileStore

IMAGE_ID = "6f0c2a58-0b89-4d5c-9a57-7c1f4f0c8e11"
FSID = "df2bf72d-845b-4daa-a479-0d109134a7e0"


def glance_json(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": IMAGE_ID, "name": "cirros", "status": "active", "disk_format": "raw", "container_format": "bare",
        "visibility": "public", "size": 3 << 20, "virtual_size": 3 << 20, "checksum": "c" * 32,
        "os_hash_algo": "sha512", "os_hash_value": "a" * 128, "protected": True, "os_hidden": False,
        "owner": "p1", "min_ram": 64, "min_disk": 1, "created_at": "2025-01-02T03:04:05Z",
        "updated_at": "2025-01-02T03:04:06Z", "tags": ["b", "a"], "os_distro": "cirros",
        "os_glance_importing_to_stores": "", "self": "/v2/images/x", "file": "/f", "schema": "/s",
        "stores": "central,dcn0", "direct_url": f"rbd://{FSID}/images/{IMAGE_ID}/snap",
        "locations": [{"url": f"rbd://{FSID}/images/{IMAGE_ID}/snap", "metadata": {"store": "central"}},
                      {"url": "file:///var/lib/glance/images/x", "metadata": {"store": "old"}}],
    }
    body.update(overrides)
    return body


def test_a_glance_record_keeps_every_attribute_and_extra_property() -> None:
    image, copies = parse_image(glance_json())
    assert (image.id, image.status, image.visibility, image.protected, image.owner) == \
        (IMAGE_ID, ImageStatus.ACTIVE, Visibility.PUBLIC, True, "p1")
    assert (image.size, image.min_ram, image.created_at, image.updated_at) == \
        (3 << 20, 64, "2025-01-02T03:04:05Z", "2025-01-02T03:04:06Z")
    assert image.properties == {"os_distro": "cirros"}  # not Glance's os_glance_* nor derived fields
    assert image.tags == ["b", "a"]
    assert [(c.store, c.fsid, c.pool, c.rbd_image, c.snapshot) for c in copies] == [
        ("central", FSID, "images", IMAGE_ID, "snap"), ("old", None, None, None, None)]


@pytest.mark.parametrize("override", [{"id": "not-a-uuid"}, {"status": "shiny"}, {"size": -1},
                                      {"protected": "yes"}, {"hw_disk_bus": 3}, {"tags": "a,b"},
                                      {"updated_at": None}])
def test_a_bad_record_is_a_400_saying_which_field(override: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_image(glance_json(**override))
    assert next(iter(override)) in caught.value.message


def test_members_keep_their_status_and_timestamps_and_bad_ones_are_refused() -> None:
    members = parse_members([{"member_id": "p2", "status": "accepted", "created_at": "2025-01-01T00:00:00Z",
                              "updated_at": "2025-01-02T00:00:00Z"}, {"member_id": "p3", "status": "pending"}],
                            IMAGE_ID)
    assert [(m.member_id, m.status) for m in members] == [("p2", "accepted"), ("p3", "pending")]
    assert (members[0].created_at, members[0].updated_at) == ("2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z")
    with pytest.raises(BadRequest):
        parse_members([{"member_id": "p2", "status": "maybe"}], IMAGE_ID)


async def published(store: FileStore, data: bytes) -> None:
    async with await store.open_writer(IMAGE_ID, len(data)) as writer:
        await writer.write(0, data)
        await writer.publish()


async def test_check_verifies_the_copy_where_it_lies_against_the_images_hashes(tmp_path: Path) -> None:
    store = FileStore("dcn0", tmp_path / "store")
    site = LocalSite(store)
    data = b"x" * (1 << 20) + bytes(2 << 20) + b"y" * 4096
    await published(store, data)
    image, _ = parse_image(glance_json(size=len(data), os_hash_value=hashlib.sha512(data).hexdigest(),
                                       checksum=hashlib.md5(data).hexdigest()))
    url = store.location_url(IMAGE_ID)
    checked = await check_copy(site, image, source_url=url, full=True, job_id="j1")
    assert (checked.verified_bytes, checked.location_url) == (len(data), url)
    old, _ = parse_image(glance_json(size=len(data), os_hash_value=None, os_hash_algo=None,
                                     checksum=hashlib.md5(data).hexdigest()))  # older than os_hash: md5 only
    assert (await check_copy(site, old, source_url=url, full=True, job_id="j2")).verified_bytes == len(data)
    for wrong in (glance_json(size=len(data)), glance_json(size=len(data), checksum="0" * 32,
                                                             os_hash_value=image.os_hash_value)):
        with pytest.raises(CopyMismatch, match="does not hash"):
            await check_copy(site, parse_image(wrong)[0], source_url=url, full=True, job_id="j3")
    bigger, _ = parse_image(glance_json(size=len(data) + 1))
    with pytest.raises(CopyMismatch, match="bytes, the image"):
        await check_copy(site, bigger, source_url=url, full=False, job_id="j4")
    unverified = await check_copy(site, parse_image(glance_json(size=len(data)))[0], source_url=url, full=False,
                                  job_id="j5")
    assert unverified.verified_bytes == 0 and unverified.location_url == url
    for full in (True, False):
        with pytest.raises(CopyMissing):
            await check_copy(LocalSite(FileStore("dcn1", tmp_path / "empty")), image, source_url=url, full=full,
                             job_id="j6")


async def test_an_adopted_image_is_written_whole_and_updated_in_place(tmp_path: Path) -> None:
    catalog = await Catalog.open(tmp_path / "catalog.db")
    try:
        image, _ = parse_image(glance_json())
        url = f"rbd://{FSID}/images/{IMAGE_ID}/snap"
        members = parse_members([{"member_id": "p2", "status": "accepted", "created_at": "2025-01-01T00:00:00Z",
                                  "updated_at": "2025-01-01T00:00:00Z"}], IMAGE_ID)
        await catalog.adopt_image(image, members=members, copies=[AdoptedCopy("central", url, "full")],
                                  source="http://glance", source_updated_at=image.updated_at, new=True)
        stored = await catalog.require_image(IMAGE_ID)
        assert (stored.created_at, stored.updated_at, stored.properties, sorted(stored.tags), stored.members) == \
            (image.created_at, image.updated_at, {"os_distro": "cirros"}, ["a", "b"], ["p2"])
        assert [(loc.store, loc.url) for loc in stored.locations] == [("central", url)]
        changed, _ = parse_image(glance_json(updated_at="2025-02-01T00:00:00Z", name="cirros-2", tags=["c"],
                                             os_distro="ubuntu"))
        assert [(m.member_id, m.status, m.created_at) for m in await catalog.image_members(IMAGE_ID)] == \
            [("p2", "accepted", "2025-01-01T00:00:00Z")]
        await catalog.adopt_image(changed, members=[], copies=[], source="http://glance",
                                  source_updated_at=changed.updated_at, new=False)
        stored = await catalog.require_image(IMAGE_ID)
        assert (stored.name, stored.tags, stored.properties, stored.members, stored.updated_at) == \
            ("cirros-2", ["c"], {"os_distro": "ubuntu"}, [], "2025-02-01T00:00:00Z")
        assert [loc.store for loc in stored.locations] == ["central"]  # the adopted copy stays
        adoption = await catalog.adoption(IMAGE_ID)
        assert adoption is not None and adoption.source_updated_at == "2025-02-01T00:00:00Z"
        assert adoption.copies["central"].verified == "full"
    finally:
        await catalog.close()


def test_the_sample_is_the_same_images_every_run_and_about_the_share_asked() -> None:
    ids = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(2000)]
    chosen = [i for i in ids if sampled(i, 10.0)]
    assert chosen == [i for i in ids if sampled(i, 10.0)]
    assert 150 < len(chosen) < 250
    assert all(sampled(i, 100.0) for i in ids)
