"""Who is calling: `X-Auth-Token` checked against a tokens file (or, with
`auth = "keystone"`, against Keystone: hub/keystone_auth.py).

The tokens file is TOML, one table per token:

    [tokens.<token>]
    user = "alice"
    project = "demo"
    roles = ["member"]

A token whose roles include "admin" is an administrator. A token that a
site file's `[agent] token_file` holds is that site's agent (`agent_site`):
agents are known by their credential, never by a user name anyone could
give a token. With `auth =
"noauth"` in the hub config (opt-in, local use only) every request runs as an
administrator of project "admin", whatever token it carries.
"""

from __future__ import annotations

import hmac
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from edgesync.errors import ConfigError, Forbidden, Unauthorized
from edgesync.model import Image, Visibility


@dataclass(frozen=True)
class Caller:
    user: str
    project: str
    roles: tuple[str, ...]
    # The edge site whose agent this caller is, from the credential it
    # presented (see the module docstring); None for everyone else.
    agent_site: str | None = None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def is_agent_of(self, site: str) -> bool:
        return self.agent_site is not None and self.agent_site == site


NOAUTH_CALLER = Caller(user="admin", project="admin", roles=("admin",))


class Authenticator(Protocol):
    """Tokens to callers: the tokens file, or Keystone (hub/keystone_auth.py).
    Raises Unauthorized for a bad token; anything else raised is answered as itself."""

    async def authenticate(self, token: str | None, service_token: str | None) -> Caller: ...


class TokenTable:
    def __init__(self, callers: dict[str, Caller]) -> None:
        self._callers = callers

    @classmethod
    def load(cls, path: Path, agent_tokens: Mapping[str, str] | None = None) -> TokenTable:
        """`agent_tokens`: token -> the edge site whose agent holds it."""
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
        for token, site in (agent_tokens or {}).items():
            if token in callers:
                callers[token] = replace(callers[token], agent_site=site)
        return cls(callers)

    async def authenticate(self, token: str | None, service_token: str | None) -> Caller:
        """The Authenticator interface; a tokens file knows no service tokens, so that header is ignored."""
        return self.caller(token)

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
    require_writer(caller, action)


# Glance's personas that may change images (its secure-RBAC defaults: a
# project reader only reads). Keystone tokens carry implied roles already.
WRITER_ROLES = frozenset({"admin", "member"})


def require_writer(caller: Caller, action: str) -> None:
    if not WRITER_ROLES & set(caller.roles):
        raise Forbidden(f"A project reader may not {action}: that needs the member role (or admin)")


def require_admin(caller: Caller, action: str) -> None:
    if not caller.is_admin:
        raise Forbidden(f"Only an admin may {action}")
