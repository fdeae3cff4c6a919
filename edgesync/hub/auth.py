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


# The role a service token gives the caller (Glance's `service_api` rule checks it).
SERVICE_ROLE = "service"
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
        """The Authenticator interface. An `X-Service-Token` must be a token of
        the file too (401 otherwise); if its roles include "service" the caller
        gains the service persona, as a Keystone service token gives it
        (Nova or Cinder acting for a user)."""
        caller = self.caller(token)
        if service_token:
            service = self.caller(service_token, header="X-Service-Token")
            if SERVICE_ROLE in service.roles and SERVICE_ROLE not in caller.roles:
                caller = replace(caller, roles=(*caller.roles, SERVICE_ROLE))
        return caller

    def caller(self, token: str | None, header: str = "X-Auth-Token") -> Caller:
        if not token:
            raise Unauthorized(f"This request needs an {header} header with a valid token")
        for known, caller in self._callers.items():
            # constant-time comparison: no timing oracle on tokens
            if hmac.compare_digest(known.encode(), token.encode()):
                return caller
        raise Unauthorized(f"The {header} is not valid; check the token you were given")


# --- who may see an image (Glance's database layer; the rules are hub/policy.py) ---


def can_see(caller: Caller, image: Image) -> bool:
    if caller.is_admin or image.owner == caller.project:
        return True
    if image.visibility in (Visibility.PUBLIC, Visibility.COMMUNITY):
        return True
    return image.visibility == Visibility.SHARED and caller.project in image.members


def require_admin(caller: Caller, action: str) -> None:
    if not caller.is_admin:
        raise Forbidden(f"Only an admin may {action}")
