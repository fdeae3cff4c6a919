"""Metadefs end to end: `edgesync metadefs load` brings Glance-format files
into a lab's hub, and glanceclient's md-* commands (which build their
requests from /v2/schemas/metadefs/*) and openstackclient's `image metadef`
commands work against it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.lab import Lab, check, glance, openstack, parse_dict_table, parse_list_table

pytestmark = pytest.mark.e2e

WATCHDOG = {
    "namespace": "OS::Compute::E2EWatchdog", "display_name": "Watchdog Behavior", "description": "e2e",
    "visibility": "public", "protected": True,
    "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "hw_"}],
    "properties": {"watchdog_action": {"title": "Watchdog Action", "type": "string",
                                       "enum": ["disabled", "reset", "poweroff", "pause", "none"]}},
}
NAME = WATCHDOG["namespace"]


@pytest.fixture(scope="module")
def loaded(file_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    defs = tmp_path_factory.mktemp("metadefs")
    (defs / "compute-watchdog.json").write_text(json.dumps(WATCHDOG))
    proc = subprocess.run([sys.executable, "-m", "edgesync", "metadefs", "load", str(defs),
                           "--lab-dir", file_lab["dir"]], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"namespace {NAME} created" in proc.stdout
    try:
        yield NAME
    finally:
        glance(file_lab, "md-namespace-update", NAME, "--protected", "False")
        glance(file_lab, "md-namespace-delete", NAME)


def test_glance_md_namespace_list_and_show(file_lab: Lab, loaded: str) -> None:
    listed = parse_list_table(check(glance(file_lab, "md-namespace-list")).stdout)
    assert loaded in [row["namespace"] for row in listed]
    shown = parse_dict_table(check(glance(file_lab, "md-namespace-show", loaded)).stdout)
    assert shown["protected"] == "True" and shown["visibility"] == "public"
    props = check(glance(file_lab, "md-property-list", loaded)).stdout
    assert "watchdog_action" in props
    assert "OS::Glance::Image" in check(glance(file_lab, "md-resource-type-list")).stdout


def test_glance_md_tags_objects_and_protection(file_lab: Lab, loaded: str) -> None:
    check(glance(file_lab, "md-tag-create-multiple", loaded, "--names", "alpha,beta"))
    tags = parse_list_table(check(glance(file_lab, "md-tag-list", loaded)).stdout)
    assert sorted(row["name"] for row in tags) == ["alpha", "beta"]
    check(glance(file_lab, "md-object-create", loaded, "--name", "Dog",
                 "--schema", json.dumps({"description": "d", "properties": {
                     "bark": {"title": "Bark", "type": "boolean"}}})))
    shown = parse_dict_table(check(glance(file_lab, "md-object-show", loaded, "Dog")).stdout)
    assert shown["name"] == "Dog"
    refused = glance(file_lab, "md-namespace-delete", loaded)
    assert refused.returncode != 0 and "protected" in refused.stderr


def test_a_member_can_read_but_not_write(file_lab: Lab, loaded: str) -> None:
    token = file_lab["member_token"]
    assert loaded in check(glance(file_lab, "md-namespace-list", token=token)).stdout
    refused = glance(file_lab, "md-tag-create", loaded, "--name", "mine", token=token)
    assert refused.returncode != 0 and "not authorized to complete add_metadef_tag" in refused.stderr


def test_openstack_image_metadef_namespace_list(file_lab: Lab, loaded: str) -> None:
    listed = json.loads(check(openstack(file_lab, "image", "metadef", "namespace", "list", "-f", "json")).stdout)
    assert loaded in [row.get("Namespace", row.get("namespace")) for row in listed]
