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

from edgesync.errors import ConfigError, Forbidden
from edgesync.hub.auth import Caller

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
IMAGE_RULES = {
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
            raise Forbidden(f"You are not authorized to complete {rule} action.")


def _mtime_ns(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"{path}: policy file not found ({exc.strerror}); fix [hub] policy_file") from exc
