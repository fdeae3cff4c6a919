"""An agent sends its token only to its own hub; an agent's reported
locations must be in its own store's form (issue 11, item 2)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from edgesync.agent.daemon import same_origin
from edgesync.config import SiteConfig, StoreConfig
from edgesync.hub.sites.agent import location_fits

HUB = "http://hub.example:9292"


@pytest.mark.parametrize("url", [HUB, HUB + "/", "HTTP://HUB.example:9292", "http://hub.example:9292/x"])
def test_the_configured_hub_is_accepted(url: str) -> None:
    assert same_origin(url, HUB)


@pytest.mark.parametrize("url", [
    "http://attacker.example:9292", "http://hub.example:9293", "https://hub.example:9292",
    "http://hub.example.attacker:9292", "http://user:pw@hub.example:9292", "http://hub.example:99999",
    "http://127.0.0.1:9292", "", "hub.example:9292",
])
def test_any_other_source_is_refused(url: str) -> None:
    assert not same_origin(url, HUB)


def _site(tmp_path: Path, store: StoreConfig) -> SiteConfig:
    return SiteConfig(name="dcn0", role="edge", availability_zone="dcn0", compute_availability_zone="dcn0",
                      storage_availability_zone="dcn0", store=store)


def test_a_file_location_must_be_the_image_in_the_sites_directory(tmp_path: Path) -> None:
    site = _site(tmp_path, StoreConfig(type="file", path=tmp_path / "dcn0"))
    image_id = str(uuid.uuid4())
    assert location_fits(site, image_id, f"file://{tmp_path / 'dcn0' / image_id}")
    for bad in (f"file:///etc/passwd#{image_id}", f"file://{tmp_path / 'dcn0' / image_id}/../../etc/passwd",
                f"file://{tmp_path / 'dcn1' / image_id}", f"http://x/{image_id}"):
        assert not location_fits(site, image_id, bad), bad


def test_an_rbd_location_must_be_in_the_sites_pool_and_cluster(tmp_path: Path) -> None:
    fsid = str(uuid.uuid4())
    conf = tmp_path / "ceph.conf"
    conf.write_text(f"[global]\nfsid = {fsid}\n")
    site = _site(tmp_path, StoreConfig(type="rbd", pool="images", ceph_conf=conf))
    image_id = str(uuid.uuid4())
    assert location_fits(site, image_id, f"rbd://{fsid}/images/{image_id}/snap")
    for bad in (f"rbd://{uuid.uuid4()}/images/{image_id}/snap", f"rbd://{fsid}/other/{image_id}/snap",
                f"rbd://attacker/images/{image_id}/../../etc/passwd", f"rbd://{fsid}/images/{image_id}/snap2"):
        assert not location_fits(site, image_id, bad), bad


def test_the_agent_refuses_a_copy_command_from_elsewhere_before_any_request(tmp_path: Path) -> None:
    from edgesync.agent.config import load_agent
    from edgesync.agent.daemon import Agent
    from edgesync.bus import CopyCommand
    from edgesync.errors import TransferError
    from tests.unit.test_agent_config import site_file

    agent = Agent(load_agent(site_file(tmp_path)))
    command = CopyCommand(task_id="t-dcn0", image_id=str(uuid.uuid4()), size_bytes=1, os_hash_value="ab" * 64,
                          source_url="http://attacker.example:9292")
    with pytest.raises(TransferError, match="not this agent's hub") as raised:
        agent._http_source(command)
    assert not raised.value.retryable
