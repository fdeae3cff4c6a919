"""Who is calling, asked of Keystone (`auth = "keystone"`), with a cache.

`X-Auth-Token` (and, when a service sends one on a user's behalf,
`X-Service-Token`) are validated by `edgesync.keystone` off the event loop.
What a token is worth is cached under the token's SHA-256:

- at most `cache_size` entries (least recently used dropped first);
- for `cache_ttl_s` at most, and never past the token's own expiry. So a
  revoked token is refused at the latest `cache_ttl_s` after its revocation —
  that is the bound (60 s by default, the lab's is 5 s);
- an invalid token is remembered as invalid for the same time, so a client
  retrying a bad token doesn't put Keystone under load;
- concurrent requests with the same new token share one validation.

Keystone's roles become the `Caller` the tokens file gives the routes:
`user` is the Keystone user id, `project` the project id, `roles` the
token's role names (Keystone already expands implied roles: admin ⇒ member
⇒ reader), so Glance's personas read as they do in Glance — admin, project
member, project reader — and a valid `X-Service-Token` whose roles include a
`service_roles` role adds `service` (the service persona: Nova or Cinder
acting for a user). A token whose user or application credential id is listed
in `[keystone.agents]` is that site's agent (`agent_site`) — ids, never
names, so no user can make itself an agent by choosing a name.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from edgesync.config import HubConfig, KeystoneConfig
from edgesync.errors import ConfigError, Forbidden, Unauthorized
from edgesync.hub.auth import Caller
from edgesync.keystone import ServiceCredentials, TokenInfo, TokenValidator

Validate = Callable[[str], "TokenInfo | None"]
SERVICE_ROLE = "service"
AGENT_ROLE = "agent"
VALIDATION_THREADS = 4


class ValidationCache:
    """Bounded, time-limited memory of validations (None: the token is not valid)."""

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._size, self._ttl_s, self._clock = size, ttl_s, clock
        self._entries: OrderedDict[str, tuple[TokenInfo | None, float]] = OrderedDict()

    def get(self, key: str) -> tuple[bool, TokenInfo | None]:
        """(found, info); an entry past its time is dropped and not found."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        if self._clock() >= entry[1]:
            del self._entries[key]
            return False, None
        self._entries.move_to_end(key)
        return True, entry[0]

    def put(self, key: str, info: TokenInfo | None) -> None:
        until = self._clock() + self._ttl_s
        if info is not None:
            until = min(until, info.expires_at)
        self._entries[key] = (info, until)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class KeystoneAuthenticator:
    def __init__(self, config: KeystoneConfig, validate: Validate,
                 clock: Callable[[], float] = time.time) -> None:
        self._config, self._validate, self._clock = config, validate, clock
        self.cache = ValidationCache(config.cache_size, config.cache_ttl_s, clock)
        self._in_flight: dict[str, asyncio.Future[TokenInfo | None]] = {}
        # Threads of their own: a slow Keystone holds these, not the loop's
        # default pool (which store and policy file I/O share).
        self._threads = ThreadPoolExecutor(VALIDATION_THREADS, thread_name_prefix="keystone")

    async def authenticate(self, token: str | None, service_token: str | None) -> Caller:
        if not token:
            raise Unauthorized("This request needs an X-Auth-Token header with a Keystone token")
        user = await self._valid(token, "X-Auth-Token")
        service = await self._valid(service_token, "X-Service-Token") if service_token else None
        return caller_from(user, service, self._config)

    async def _valid(self, token: str, header: str) -> TokenInfo:
        info = await self._info(token)
        if info is None or info.expires_at <= self._clock():
            raise Unauthorized(f"The {header} is not a valid Keystone token (expired or revoked?); "
                               "get a new one")
        return info

    async def _info(self, token: str) -> TokenInfo | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        found, info = self.cache.get(key)
        if found:
            return info
        pending = self._in_flight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[TokenInfo | None] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            info = await asyncio.get_running_loop().run_in_executor(self._threads, self._validate, token)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._in_flight[key]
        self.cache.put(key, info)  # only answers are cached, never "Keystone is down"
        future.set_result(info)
        return info


def caller_from(user: TokenInfo, service: TokenInfo | None, config: KeystoneConfig) -> Caller:
    """The routes' Caller for a validated token (and service token)."""
    if not user.project_id:
        raise Forbidden("The X-Auth-Token is not scoped to a project; ask Keystone for a project-scoped token")
    roles = list(dict.fromkeys(r.lower() for r in user.roles))
    if service is not None and {r.lower() for r in service.roles} & set(config.service_roles):
        roles.append(SERVICE_ROLE)
    site = config.agents.get(user.application_credential_id or "") or config.agents.get(user.user_id)
    if site is not None:
        roles.append(AGENT_ROLE)
    return Caller(user=user.user_id, project=user.project_id, roles=tuple(dict.fromkeys(roles)), agent_site=site)


def keystone_authenticator(config: HubConfig) -> KeystoneAuthenticator:
    ks = config.keystone
    if ks is None:  # load_hub refuses auth = "keystone" without [keystone]; a HubConfig built by hand may not
        raise ConfigError('auth = "keystone" needs a [keystone] table')
    validator = TokenValidator(ServiceCredentials(
        auth_url=ks.auth_url, username=ks.username, password=ks.password, project_name=ks.project_name,
        user_domain_name=ks.user_domain_name, project_domain_name=ks.project_domain_name,
        timeout_s=ks.timeout_s, ca_file=ks.ca_file))
    return KeystoneAuthenticator(ks, validator.validate)
