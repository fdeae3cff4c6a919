"""The source Glance, read only: who we are to it, and what it holds.

Credentials, in this order: a token (`--os-token`, `$OS_AUTH_TOKEN`); a
cloud of clouds.yaml (`--os-cloud`, `$OS_CLOUD`; the file from
`$OS_CLIENT_CONFIG_FILE`, `./clouds.yaml`, `~/.config/openstack/`,
`/etc/openstack/`); or the usual `OS_AUTH_URL`, `OS_USERNAME`,
`OS_PASSWORD`, `OS_PROJECT_NAME` … variables. The Glance URL may be left out
with Keystone credentials: the catalog's `image` endpoint is used then.

`GlanceSource` only ever sends GET requests: adoption never writes to the
source. It lists every image the credentials see — every visibility, every
member status, hidden ones too — page by page.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from edgesync.errors import EdgesyncError
from edgesync.keystone import UserCredentials, UserToken

PAGE = 200
REQUEST_TIMEOUT_S = 60.0
CLOUDS_FILES = ("clouds.yaml", "~/.config/openstack/clouds.yaml", "/etc/openstack/clouds.yaml")
# Listings that together show every image: Glance hides os_hidden images
# unless asked for them only, and shows a member pending shares only when asked.
LISTINGS = ({"visibility": "all", "member_status": "all"},
            {"visibility": "all", "member_status": "all", "os_hidden": "true"})


class SourceError(EdgesyncError):
    """The source Glance (or its Keystone) can't be read as asked."""


@dataclass(frozen=True)
class SourceOptions:
    url: str | None
    token: str | None
    cloud: str | None
    ca_file: str | None


class Tokens:
    """A fixed token, or one from Keystone credentials (renewed when Glance refuses it)."""

    def __init__(self, token: str | None, user: UserToken | None) -> None:
        self._token, self._user = token, user

    async def get(self) -> str:
        if self._token is None:
            assert self._user is not None
            self._token = await asyncio.to_thread(self._user.get)
        return self._token

    def renewable(self) -> bool:
        return self._user is not None

    def forget(self) -> None:
        if self._user is not None:
            self._token = None

    async def image_endpoint(self) -> str | None:
        return None if self._user is None else await asyncio.to_thread(self._user.endpoint, "image")


def resolve(opts: SourceOptions, env: Mapping[str, str] = os.environ) -> Tokens:
    token = opts.token or env.get("OS_AUTH_TOKEN") or env.get("OS_TOKEN")
    if token:
        return Tokens(token, None)
    cloud = opts.cloud or env.get("OS_CLOUD")
    creds = _from_cloud(cloud, env) if cloud else _from_env(env)
    if creds is None:
        raise SourceError("No credentials for the source Glance: give --os-token, or --os-cloud NAME "
                          "(clouds.yaml), or set OS_AUTH_URL, OS_USERNAME, OS_PASSWORD and OS_PROJECT_NAME")
    return Tokens(None, UserToken(creds))


def _from_env(env: Mapping[str, str]) -> UserCredentials | None:
    needed = [env.get(k) for k in ("OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD")]
    if not all(needed):
        return None
    return UserCredentials(
        auth_url=env["OS_AUTH_URL"], username=env["OS_USERNAME"], password=env["OS_PASSWORD"],
        project_name=env.get("OS_PROJECT_NAME") or env.get("OS_TENANT_NAME"), project_id=env.get("OS_PROJECT_ID"),
        user_domain_name=env.get("OS_USER_DOMAIN_NAME", "Default"),
        project_domain_name=env.get("OS_PROJECT_DOMAIN_NAME", "Default"),
        region_name=env.get("OS_REGION_NAME"), ca_file=env.get("OS_CACERT"))


def _from_cloud(name: str, env: Mapping[str, str]) -> UserCredentials:
    candidates = [env["OS_CLIENT_CONFIG_FILE"]] if env.get("OS_CLIENT_CONFIG_FILE") else list(CLOUDS_FILES)
    for candidate in candidates:
        path = Path(candidate).expanduser()
        if path.is_file():
            try:
                clouds = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise SourceError(f"Can't read {path}: {exc}") from exc
            cloud = (clouds.get("clouds") or {}).get(name) if isinstance(clouds, dict) else None
            if not isinstance(cloud, dict):
                raise SourceError(f"{path} has no cloud named {name!r}")
            return _cloud_credentials(name, cloud)
    raise SourceError(f"No clouds.yaml found for --os-cloud {name} (looked at {', '.join(candidates)})")


def _cloud_credentials(name: str, cloud: dict[str, Any]) -> UserCredentials:
    auth = cloud.get("auth") or {}
    try:
        return UserCredentials(
            auth_url=auth["auth_url"], username=auth["username"], password=auth["password"],
            project_name=auth.get("project_name"), project_id=auth.get("project_id"),
            user_domain_name=auth.get("user_domain_name", "Default"),
            project_domain_name=auth.get("project_domain_name", "Default"),
            region_name=cloud.get("region_name"), ca_file=cloud.get("cacert"))
    except KeyError as exc:
        raise SourceError(f"cloud {name!r} has no auth.{exc.args[0]} (password auth is what adopt uses)") from exc


class GlanceSource:
    """`async with GlanceSource(url, tokens) as glance: async for image in glance.images(): …`."""

    def __init__(self, url: str, tokens: Tokens, *, ca_file: str | None = None) -> None:
        self.url = url.rstrip("/").removesuffix("/v2")
        self._tokens = tokens
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> GlanceSource:
        from edgesync.tls import TlsConfig, http_session

        self._session = http_session(TlsConfig(ca_file=Path(self._ca_file) if self._ca_file else None),
                                     timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def images(self) -> AsyncIterator[dict[str, Any]]:
        """Every image the credentials see, each once."""
        seen: set[str] = set()
        for filters in LISTINGS:
            path: str | None = "/v2/images?" + "&".join(f"{k}={v}" for k, v in {**filters, "limit": PAGE}.items())
            while path:
                page = await self.get(path)
                for image in page.get("images", []):
                    if image.get("id") not in seen:
                        seen.add(image["id"])
                        yield image
                path = page.get("next")

    async def members(self, image_id: str) -> list[dict[str, Any]]:
        body = await self.get(f"/v2/images/{image_id}/members")
        members: list[dict[str, Any]] = body.get("members", [])
        return members

    async def get(self, path: str) -> Any:
        assert self._session is not None, "use GlanceSource as `async with`"
        for attempt in (1, 2):
            headers = {"X-Auth-Token": await self._tokens.get(), "Accept": "application/json"}
            try:
                async with self._session.get(self.url + path, headers=headers) as resp:
                    raw, status = await resp.read(), resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise SourceError(f"Can't read {self.url}{path}: {str(exc) or type(exc).__name__}",
                                  retryable=True) from exc
            if status == 401 and attempt == 1 and self._tokens.renewable():
                self._tokens.forget()  # expired meanwhile: a new one, once
                continue
            if status >= 400:
                text = raw.decode(errors="replace")[:300]
                raise SourceError(f"The source Glance answered GET {path} with {status}: {text}")
            try:
                return json.loads(raw)
            except ValueError as exc:
                raise SourceError(f"The source Glance answered GET {path} with something not JSON") from exc
        raise AssertionError("unreachable")
