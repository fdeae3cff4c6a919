"""Glance's policy rules and defaults, and operator overrides in Glance's
policy.yaml format, evaluated by oslo.policy (edgesync.hub.policy)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgesync.errors import ConfigError, Forbidden
from edgesync.hub.auth import Caller
from edgesync.hub.policy import DCN_RULES, DEFAULT_RULES, GLANCE_IMAGE_RULES, IMAGE_RULES, Policy

ADMIN = Caller("root", "admin", ("admin",))
MEMBER = Caller("alice", "p1", ("member",))
READER = Caller("rita", "p1", ("reader",))
OTHER = Caller("bob", "p2", ("member",))
SERVICE = Caller("nova", "service", ("service",))

# The rules the seed's chapter 1.9 overrides to open metadefs to every user.
SEED_METADEF_RULES = [
    "get_metadef_namespace", "get_metadef_namespaces", "modify_metadef_namespace", "add_metadef_namespace",
    "delete_metadef_namespace", "get_metadef_object", "get_metadef_objects", "modify_metadef_object",
    "add_metadef_object", "delete_metadef_object", "list_metadef_resource_types", "get_metadef_resource_type",
    "add_metadef_resource_type_association", "remove_metadef_resource_type_association",
    "get_metadef_property", "get_metadef_properties", "modify_metadef_property", "add_metadef_property",
    "remove_metadef_property", "get_metadef_tag", "get_metadef_tags", "modify_metadef_tag", "add_metadef_tag",
    "add_metadef_tags", "delete_metadef_tag", "delete_metadef_tags",
]
WRITES = [r for r in SEED_METADEF_RULES if not r.startswith(("get_", "list_"))]


def test_every_metadef_rule_the_seed_names_is_a_glance_rule() -> None:
    assert set(SEED_METADEF_RULES) <= set(DEFAULT_RULES)


@pytest.mark.parametrize("rule", WRITES)
def test_metadef_writes_are_admin_only_by_default(rule: str) -> None:
    policy = Policy()
    target = {"project_id": "p1", "visibility": "public"}
    assert policy.allows(rule, ADMIN, target)
    for caller in (MEMBER, READER, OTHER, SERVICE):
        assert not policy.allows(rule, caller, target), (rule, caller)


def test_metadef_reads_follow_namespace_visibility_and_ownership() -> None:
    policy = Policy()
    public_other = {"project_id": "p2", "visibility": "public"}
    private_other = {"project_id": "p2", "visibility": "private"}
    private_own = {"project_id": "p1", "visibility": "private"}
    assert policy.allows("get_metadef_namespace", MEMBER, public_other)
    assert policy.allows("get_metadef_namespace", READER, private_own)
    assert not policy.allows("get_metadef_namespace", MEMBER, private_other)
    assert policy.allows("get_metadef_namespace", ADMIN, private_other)
    assert policy.allows("get_metadef_tags", MEMBER, public_other)


def test_roles_are_implied_as_keystone_does_admin_member_reader() -> None:
    """A member passes `role:reader` checks; a reader doesn't pass `role:member` ones."""
    policy = Policy()
    image = {"project_id": "p1", "owner": "p1", "visibility": "private", "member_id": "p1"}
    assert policy.allows("get_images", MEMBER, image)
    assert policy.allows("modify_image", MEMBER, image)
    assert policy.allows("get_images", READER, image)
    assert not policy.allows("modify_image", READER, image)


def test_glance_defaults_for_tasks_and_fetching_locations() -> None:
    policy = Policy()
    assert policy.allows("tasks_api_access", ADMIN) and not policy.allows("tasks_api_access", MEMBER)
    assert policy.allows("fetch_image_location", SERVICE) and not policy.allows("fetch_image_location", MEMBER)


def test_the_dcn_defaults_differ_from_glances_only_where_they_say(tmp_path: Path) -> None:
    """copy_image: Glance's admin-only, the hub's anyone who may download the
    image; get_image_location: Glance's project reader, the hub's service
    (or admin). Every other image rule is Glance's own."""
    assert GLANCE_IMAGE_RULES["copy_image"] == "rule:context_is_admin"
    assert {name for name in IMAGE_RULES if IMAGE_RULES[name] != GLANCE_IMAGE_RULES[name]} == set(DCN_RULES)
    policy = Policy()
    public_other = {"project_id": "p2", "owner": "p2", "visibility": "public"}
    private_other = {"project_id": "p2", "owner": "p2", "visibility": "private"}
    assert policy.allows("copy_image", MEMBER, public_other)
    assert not policy.allows("copy_image", READER, public_other)  # a reader may not download either
    assert policy.allows("copy_image", SERVICE, private_other) and policy.allows("copy_image", ADMIN, private_other)
    own = {"project_id": "p1", "owner": "p1", "visibility": "private"}
    assert not policy.allows("get_image_location", MEMBER, own)
    assert policy.allows("get_image_location", SERVICE, own) and policy.allows("get_image_location", ADMIN, own)
    # An operator who wants Glance's own defaults back writes them in the file.
    glance = Policy(write_policy(tmp_path / "policy.json", json.dumps({k: GLANCE_IMAGE_RULES[k] for k in DCN_RULES})))
    assert not glance.allows("copy_image", MEMBER, public_other)
    assert glance.allows("get_image_location", MEMBER, own) and not glance.allows("get_image_location", SERVICE, own)


def write_policy(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_seeds_metadef_default_overrides_open_metadefs_to_everyone(tmp_path: Path) -> None:
    lines = ['"metadef_default": ""'] + [f'"{rule}": "rule:metadef_default"' for rule in SEED_METADEF_RULES]
    policy = Policy(write_policy(tmp_path / "policy.yaml", "\n".join(lines) + "\n"))
    private_other = {"project_id": "p2", "visibility": "private"}
    for rule in SEED_METADEF_RULES:
        assert policy.allows(rule, MEMBER, private_other), rule
        assert policy.allows(rule, READER, private_other), rule


def test_one_override_changes_only_its_rule(tmp_path: Path) -> None:
    policy = Policy(write_policy(tmp_path / "policy.yaml", '"add_metadef_tag": "role:member"\n'))
    assert policy.allows("add_metadef_tag", MEMBER)
    assert not policy.allows("delete_metadef_tag", MEMBER)
    assert not policy.allows("add_metadef_namespace", MEMBER)


def test_json_policy_files_work_too(tmp_path: Path) -> None:
    policy = Policy(write_policy(tmp_path / "policy.json", '{"copy_image": "role:member"}'))
    assert policy.allows("copy_image", MEMBER)


def test_authorize_raises_403_naming_the_action() -> None:
    with pytest.raises(Forbidden, match="add_metadef_namespace"):
        Policy().authorize("add_metadef_namespace", MEMBER)
    Policy().authorize("add_metadef_namespace", ADMIN)


@pytest.mark.parametrize("text, fragment", [
    ("copy_image: [role:admin\n", "policy.yaml format"),
    ("- a\n- b\n", "maps rule names"),
    ("copy_image: 5\n", "copy_image"),
])
def test_a_bad_policy_file_is_a_config_error_saying_what(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Policy(write_policy(tmp_path / "policy.yaml", text))


def test_a_missing_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="policy_file"):
        Policy(tmp_path / "nope.yaml")


def test_an_edited_file_is_reloaded_and_a_broken_edit_keeps_the_rules_in_force(tmp_path: Path) -> None:
    path = write_policy(tmp_path / "policy.yaml", '"add_metadef_tag": "role:member"\n')
    policy = Policy(path)
    assert not policy.reload_if_changed(), "unchanged file: nothing to do"
    write_policy(path, '"add_metadef_tag": "role:admin"\n')
    os.utime(path, ns=(1, 10**18))  # a distinct mtime, whatever the clock's resolution
    assert policy.reload_if_changed()
    assert not policy.allows("add_metadef_tag", MEMBER)
    write_policy(path, "add_metadef_tag: [\n")
    os.utime(path, ns=(1, 2 * 10**18))
    assert not policy.reload_if_changed()
    assert policy.allows("add_metadef_tag", ADMIN) and not policy.allows("add_metadef_tag", MEMBER)
