"""Who is calling: `X-Auth-Token` checked against a tokens file.

The tokens file is TOML, one table per token:

    [tokens.<token>]
    user = "alice"
    project = "demo"
    roles = ["member"]

A token whose roles include "admin" is an administrator. With `auth =
"noauth"` in the hub config (opt-in, local use only) every request runs as an
administrator of project "admin", whatever token it carries.
"""

from __future__ import annotations

import hmac
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edgesync.errors import ConfigError, Forbidden, Unauthorized
from edgesync.model import Image, Visibility


@dataclass(frozen=True)
class Caller:
    user: str
    project: str
    roles: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


NOAUTH_CALLER = Caller(user="admin", project="admin", roles=("admin",))


class TokenTable:
    def __init__(self, callers: dict[str, Caller]) -> None:
        self._callers = callers

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: tokens file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        callers = {}
        for token, entry in data.get("tokens", {}).items():
            if not isinstance(entry, dict) or not {"user", "project"} <= entry.keys():
                raise ConfigError(f"{path}: [tokens.{token[:4]}…] needs 'user' and 'project'")
            callers[token] = Caller(entry["user"], entry["project"], tuple(entry.get("roles", ["member"])))
        return cls(callers)

    def caller(self, token: str | None) -> Caller:
        if not token:
            raise Unauthorized("This request needs an X-Auth-Token header with a valid token")
        for known, caller in self._callers.items():
            # constant-time comparison: no timing oracle on tokens
            if hmac.compare_digest(known.encode(), token.encode()):
                return caller
        raise Unauthorized("The X-Auth-Token is not valid; check the token you were given")


# --- policy: who may see and change what --------------------------------------


def can_see(caller: Caller, image: Image) -> bool:
    if caller.is_admin or image.owner == caller.project:
        return True
    if image.visibility in (Visibility.PUBLIC, Visibility.COMMUNITY):
        return True
    return image.visibility == Visibility.SHARED and caller.project in image.members


def require_owner_or_admin(caller: Caller, image: Image, action: str) -> None:
    if not (caller.is_admin or image.owner == caller.project):
        raise Forbidden(f"Only the image's owner or an admin may {action} (image {image.id})")


def require_admin(caller: Caller, action: str) -> None:
    if not caller.is_admin:
        raise Forbidden(f"Only an admin may {action}")
