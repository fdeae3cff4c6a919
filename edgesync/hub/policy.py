"""Glance's policies: its rule names and secure-RBAC defaults (2024.x),
overridden by an operator-editable file in Glance's own `policy.yaml`
format, evaluated by oslo.policy (the only module importing it).

The file maps rule names to check strings, exactly as Glance's does:

    "metadef_default": ""
    "add_metadef_namespace": "rule:metadef_default"
    "copy_image": "role:admin or role:member"

Rules the file doesn't name keep their defaults; names that are not
Glance's are kept too (aliases such as `metadef_default`, which the seed's
overrides use). The file is read when the hub starts — a file that can't be
parsed stops the start with a ConfigError saying where — and read again when
it changes (`reload_if_changed`, which the hub calls off the event loop); a
changed file that can't be parsed keeps the rules in force, with an error in
the log.

Callers' roles are expanded as Keystone's default implied roles do
(admin ⇒ member ⇒ reader), so a tokens-file caller with role "member"
passes Glance's `role:reader` checks as a Keystone member would.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oslo_config import cfg
from oslo_policy import policy as oslo_policy

from edgesync.errors import ConfigError, Forbidden, NotFound
from edgesync.hub.auth import Caller
from edgesync.model import Image, Visibility

log = logging.getLogger(__name__)

# --- Glance's defaults (glance/policies/*.py), as check strings -----------------

_ADMIN = "rule:context_is_admin"
_PROJECT_MEMBER = "role:member and project_id:%(project_id)s"
_PROJECT_READER = "role:reader and project_id:%(project_id)s"
_IMAGE_MEMBER = "project_id:%(member_id)s"
_VISIBLE = (f"project_id:%(project_id)s or {_IMAGE_MEMBER} or 'community':%(visibility)s "
            "or 'public':%(visibility)s or 'shared':%(visibility)s")
_ADMIN_OR_MEMBER = f"{_ADMIN} or ({_PROJECT_MEMBER})"
_ADMIN_OR_READER = f"{_ADMIN} or ({_PROJECT_READER})"
_ADMIN_OR_READER_GET_IMAGE = f"{_ADMIN} or (role:reader and ({_VISIBLE}))"
_ADMIN_OR_MEMBER_DOWNLOAD = f"{_ADMIN} or (role:member and ({_VISIBLE}))"
_ADMIN_OR_READER_OR_SHARED_MEMBER = f"{_ADMIN} or role:reader and (project_id:%(project_id)s or {_IMAGE_MEMBER})"
_READER_OR_PUBLIC_NAMESPACE = f"{_ADMIN} or (role:reader and (project_id:%(project_id)s or 'public':%(visibility)s))"
_SERVICE = "rule:service_api"
_METADEF_ADMIN = "rule:metadef_admin"

BASE_RULES = {
    "default": "",
    "context_is_admin": "role:admin",
    "service_api": "role:service or role:admin",
}
GLANCE_IMAGE_RULES = {
    "add_image": f"{_ADMIN} or ({_PROJECT_MEMBER} and project_id:%(owner)s)",
    "delete_image": _ADMIN_OR_MEMBER,
    "get_image": _ADMIN_OR_READER_GET_IMAGE,
    "get_images": _ADMIN_OR_READER,
    "modify_image": _ADMIN_OR_MEMBER,
    "publicize_image": _ADMIN,
    "communitize_image": _ADMIN_OR_MEMBER,
    "download_image": _ADMIN_OR_MEMBER_DOWNLOAD,
    "download_from_store": _ADMIN_OR_MEMBER_DOWNLOAD,
    "upload_image": _ADMIN_OR_MEMBER,
    "delete_image_location": _ADMIN,
    "get_image_location": _ADMIN_OR_READER,
    "set_image_location": _ADMIN_OR_MEMBER,
    "add_image_location": f"{_SERVICE} or ({_PROJECT_MEMBER} and project_id:%(owner)s)",
    "fetch_image_location": _SERVICE,
    "add_member": _ADMIN_OR_MEMBER,
    "delete_member": _ADMIN_OR_MEMBER,
    "get_member": _ADMIN_OR_READER_OR_SHARED_MEMBER,
    "get_members": _ADMIN_OR_READER_OR_SHARED_MEMBER,
    "modify_member": f"{_ADMIN} or (role:member and {_IMAGE_MEMBER})",
    "manage_image_cache": _ADMIN,
    "deactivate": _ADMIN_OR_MEMBER,
    "reactivate": _ADMIN_OR_MEMBER,
    "copy_image": _ADMIN,
    "stores_info_detail": f"{_ADMIN} or {_SERVICE}",
}
# --- the DCN policy: where the hub's defaults differ from Glance's --------------
# (README, "Policies", says why to operators.)
DCN_RULES = {
    # Nova and Cinder clone from `locations`/`direct_url` for every user's
    # boot, public images of other projects included, and send a service
    # token (role service) when they do. Glance's default shows them to the
    # owning project's readers only — so a boot from another project's public
    # image finds nothing to clone — and users have no use for storage paths.
    "get_image_location": _SERVICE,
    # A boot at an edge site lacking the image copies it there (Nova's
    # copy_to_store, with the user's token): anyone who may download the
    # image may have it copied to a site's store. Glance: admin only, so such
    # a boot fails (Nova doesn't fall back to a download on 403).
    "copy_image": f"{_SERVICE} or {_ADMIN_OR_MEMBER_DOWNLOAD}",
}
IMAGE_RULES = {**GLANCE_IMAGE_RULES, **DCN_RULES}
TASK_RULES = {
    "get_task": "rule:default",
    "get_tasks": "rule:default",
    "add_task": "rule:default",
    "modify_task": "rule:default",
    "tasks_api_access": _ADMIN,
}
_METADEF_READ = ("get_metadef_namespace", "get_metadef_namespaces", "get_metadef_object", "get_metadef_objects",
                 "list_metadef_resource_types", "get_metadef_resource_type", "get_metadef_property",
                 "get_metadef_properties", "get_metadef_tag", "get_metadef_tags")
_METADEF_WRITE = ("modify_metadef_namespace", "add_metadef_namespace", "delete_metadef_namespace",
                  "modify_metadef_object", "add_metadef_object", "delete_metadef_object",
                  "add_metadef_resource_type_association", "remove_metadef_resource_type_association",
                  "modify_metadef_property", "add_metadef_property", "remove_metadef_property",
                  "modify_metadef_tag", "add_metadef_tag", "add_metadef_tags", "delete_metadef_tag",
                  "delete_metadef_tags")
METADEF_RULES = {
    # Only admins create, update or delete metadefs by default: resource names
    # stay private and nobody floods the catalog (the seed, chapter 1.8).
    "metadef_default": "",
    "metadef_admin": _ADMIN,
    **dict.fromkeys(_METADEF_READ, _READER_OR_PUBLIC_NAMESPACE),
    # Glance lists every namespace to a reader of its project; the listing
    # itself filters by visibility.
    "get_metadef_namespaces": _ADMIN_OR_READER,
    **dict.fromkeys(_METADEF_WRITE, _METADEF_ADMIN),
}
DEFAULT_RULES: dict[str, str] = {**BASE_RULES, **IMAGE_RULES, **TASK_RULES, **METADEF_RULES}

# Keystone's default role implications (admin implies member implies reader).
_IMPLIED_ROLES = {"admin": ("member", "reader"), "member": ("reader",)}


def read_policy_file(path: Path) -> dict[str, str]:
    """A Glance policy file (YAML or JSON): rule name → check string."""
    try:
        rules = oslo_policy.parse_file_contents(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: policy file can't be read: {exc}") from exc
    except ValueError as exc:  # yaml's errors derive from it in oslo's parser
        raise ConfigError(f"{path}: not a policy file in Glance's policy.yaml format: {exc}") from exc
    if not isinstance(rules, Mapping):
        raise ConfigError(f"{path}: a policy file maps rule names to check strings")
    bad = [name for name, check in rules.items() if not isinstance(check, str)]
    if bad:
        raise ConfigError(f"{path}: the check of rule(s) {', '.join(map(str, bad))} must be a string "
                          "(e.g. \"role:admin\", or \"\" for anyone)")
    return dict(rules)


# What a refusal tells the caller to do, by rule (else a generic hint).
_OWNER = "only the image's owner (its project's member role; a reader only reads) or an admin may"
_HINTS = {
    "add_image": "creating an image needs the member role (a reader only reads) in the project that will own it, "
                 "or admin",
    "modify_image": f"{_OWNER} change it",
    "delete_image": f"{_OWNER} delete it",
    "upload_image": f"{_OWNER} give it data",
    "download_image": "downloading needs the member role (a reader may only look)",
    "publicize_image": "Only an admin may make an image public; use community or shared instead",
    "communitize_image": f"{_OWNER} make it community",
    "copy_image": "copying to other stores needs the member role on an image you may see (or admin)",
    "delete_image_location": "only an admin may remove an image's copy from a store",
    "get_image_location": "only an admin or a service (a token with role service) sees an image's locations",
    "fetch_image_location": "only an admin or a service (a token with role service) reads an image's locations",
    "add_member": f"{_OWNER} share it",
    "delete_member": f"{_OWNER} remove a member",
    "modify_member": "only the member itself (its project's member role) may accept or reject a share",
    "stores_info_detail": "only an admin or a service (a token with role service) sees store details",
    "deactivate": f"{_OWNER} deactivate it",
    "reactivate": f"{_OWNER} reactivate it",
}


def refusal(rule: str) -> str:
    hint = _HINTS.get(rule, "the policy does not allow it to this caller")
    return f"You are not authorized to complete {rule} action: {hint} (policy rule '{rule}')"


def image_target(image: Image, caller: Caller) -> dict[str, Any]:
    """Glance's ImageTarget: the image's fields and extra properties, with
    `project_id` the owner and `member_id` the caller's project when the
    caller is a member of a shared image (Glance sets it for every non-owner
    who found a shared image, which only a member or an admin can). A key
    left out fails its check (oslo.policy treats a missing key as False)."""
    target: dict[str, Any] = {**image.properties, "id": image.id, "name": image.name,
                              "status": image.status.value, "visibility": image.visibility.value,
                              "protected": image.protected, "os_hidden": image.os_hidden}
    if image.owner is not None:
        target["owner"] = target["project_id"] = image.owner
    if (image.visibility == Visibility.SHARED and caller.project != image.owner
            and caller.project in image.members):
        target["member_id"] = caller.project
    return target


def new_image_target(owner: str | None, visibility: str) -> dict[str, Any]:
    """Glance's target for an image not created yet (add_image); no owner
    (an explicit null) fails every owner check."""
    target: dict[str, Any] = {"visibility": visibility}
    if owner is not None:
        target["project_id"] = target["owner"] = owner
    return target


def credentials(caller: Caller) -> dict[str, Any]:
    roles = set(caller.roles)
    for role in caller.roles:
        roles.update(_IMPLIED_ROLES.get(role, ()))
    return {"roles": sorted(roles), "project_id": caller.project, "user_id": caller.user,
            "is_admin": "admin" in roles}


@dataclass(frozen=True)
class _Loaded:
    mtime_ns: int | None
    enforcer: oslo_policy.Enforcer


class Policy:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._loaded = self._load()

    def _load(self) -> _Loaded:
        overrides: dict[str, str] = {}
        mtime_ns = None
        if self.path is not None:
            mtime_ns = _mtime_ns(self.path)
            overrides = read_policy_file(self.path)
        rules = oslo_policy.Rules.from_dict({**DEFAULT_RULES, **overrides}, default_rule="default")
        # use_conf=False: oslo never reads a file itself (so no disk I/O on the event loop).
        enforcer = oslo_policy.Enforcer(cfg.ConfigOpts(), use_conf=False)
        enforcer.set_rules(rules, overwrite=True, use_conf=False)
        return _Loaded(mtime_ns, enforcer)

    def reload_if_changed(self) -> bool:
        """Blocking (stat and read): run it off the event loop."""
        if self.path is None:
            return False
        try:
            if _mtime_ns(self.path) == self._loaded.mtime_ns:
                return False
            self._loaded = self._load()
        except ConfigError as exc:
            log.error("policy file not reloaded, the rules in force stay: %s", exc.message)
            return False
        log.info("policy file %s reloaded", self.path)
        return True

    def allows(self, rule: str, caller: Caller, target: Mapping[str, Any] | None = None) -> bool:
        if rule not in DEFAULT_RULES:
            raise KeyError(f"not a Glance policy rule: {rule}")  # a programming error, not a client's
        return bool(self._loaded.enforcer.enforce(rule, dict(target or {}), credentials(caller)))

    def authorize(self, rule: str, caller: Caller, target: Mapping[str, Any] | None = None) -> None:
        """Forbidden (403) unless `rule` allows the caller on `target`."""
        if not self.allows(rule, caller, target):
            raise Forbidden(refusal(rule))

    def allows_on_image(self, rule: str, caller: Caller, image: Image) -> bool:
        return self.allows(rule, caller, image_target(image, caller))

    def enforce_on_image(self, rule: str, caller: Caller, image: Image) -> None:
        """Glance's ImageAPIPolicy: a refused rule is a 403 on an image the
        caller may see (`get_image`) and a 404 on one it may not, so a refusal
        never tells anyone that an image they can't see exists."""
        target = image_target(image, caller)
        if self.allows(rule, caller, target):
            return
        if rule == "get_image" or not self.allows("get_image", caller, target):
            raise NotFound(f"No image found with ID {image.id}")
        raise Forbidden(refusal(rule))

    def enforce_visibility(self, caller: Caller, visibility: str, target: Mapping[str, Any]) -> None:
        """Glance's _enforce_image_visibility: public and community have rules of their own."""
        if visibility == Visibility.PUBLIC.value:
            self.authorize("publicize_image", caller, target)
        elif visibility == Visibility.COMMUNITY.value:
            self.authorize("communitize_image", caller, target)


def _mtime_ns(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"{path}: policy file not found ({exc.strerror}); fix [hub] policy_file") from exc
