"""`edgesync agent register`: tell the hub about images created at this site.

An image created at an edge site — a Nova snapshot written into the site's
pool as RBD image `<uuid>` with protected snapshot `snap` — exists only
there. Registering it records it in the hub's catalog, located at this site
only, and starts its copy to central at once; until that copy lands, copies
to other edges are refused (hub first).

It runs at the site, with the agent's own site file: the copy is read through
the site's store (with the site's own cephx user) to compute the size, md5
and sha512 that every later copy is verified against, and the hub is called
with the agent's token (the hub lets only this site's agent, or an admin,
register images here).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

from edgesync.agent.config import AgentConfig
from edgesync.agent.hub_token import HubToken
from edgesync.errors import BadRequest, EdgesyncError, NotFound
from edgesync.stores import open_store
from edgesync.stores.base import ImageStore
from edgesync.tls import http_session
from edgesync.transfer.http import AUTH_HEADER
from edgesync.transfer.pipeline import digest_published

PUBLISHED_SNAPSHOT = "snap"  # what Nova's RBD snapshots and edgesync's copies carry
HUB_TIMEOUT = aiohttp.ClientTimeout(total=60)


class HubRefused(EdgesyncError):
    """The hub answered the registration with an error (its message is kept)."""


class HubUnreachable(EdgesyncError):
    retryable = True


@dataclass(frozen=True)
class Registered:
    image_id: str
    location_url: str
    task_id: str


@dataclass(frozen=True)
class Outcome:
    """What became of one argument: registered, or the error saying why not."""

    ref: str
    registered: Registered | None = None
    error: EdgesyncError | None = None


def image_id_of(ref: str, pool: str) -> str:
    """The image id an argument names: the id itself, or the RBD name of its
    copy (`[pool/]<uuid>[@snap]`, as `rbd ls` and `rbd snap ls` show it)."""
    name = ref
    if "/" in name:
        ref_pool, _, name = name.rpartition("/")
        if ref_pool != pool:
            raise BadRequest(f"{ref!r} is in pool {ref_pool!r}; this site's images are in pool {pool!r}")
    name, _, snap = name.partition("@")
    if snap and snap != PUBLISHED_SNAPSHOT:
        raise BadRequest(f"{ref!r}: images are registered by their protected snapshot "
                         f"{PUBLISHED_SNAPSHOT!r}, not {snap!r}")
    try:
        return str(uuid.UUID(name))
    except ValueError:
        raise BadRequest(
            f"{ref!r} does not name an image id: an image created at a site is registered under its "
            f"id, as RBD image <uuid> with protected snapshot {PUBLISHED_SNAPSHOT!r} (what Nova's RBD "
            "snapshots create)") from None


async def register(config: AgentConfig, refs: list[str], *, name: str | None = None,
                   owner: str | None = None, visibility: str | None = None) -> list[Outcome]:
    """Register each image `refs` names; one failing doesn't stop the others."""
    extra = {k: v for k, v in (("name", name), ("owner", owner), ("visibility", visibility)) if v}
    store = open_store(config.site)
    outcomes = []
    try:
        async with http_session(config.tls, timeout=HUB_TIMEOUT) as session:
            for ref in refs:
                try:
                    registered = await _register_one(config, store, session, ref, extra)
                except EdgesyncError as exc:
                    outcomes.append(Outcome(ref, error=exc))
                else:
                    outcomes.append(Outcome(ref, registered=registered))
    finally:
        await store.close()
    return outcomes


async def _register_one(config: AgentConfig, store: ImageStore, session: aiohttp.ClientSession,
                        ref: str, extra: dict[str, str]) -> Registered:
    image_id = image_id_of(ref, config.site.store.pool)
    if not await store.exists(image_id):
        raise NotFound(f"store {store.name} holds no published copy of image {image_id} (image "
                       f"{image_id} with protected snapshot {PUBLISHED_SNAPSHOT!r}); create it there first")
    digest = await digest_published(store, image_id, with_md5=True)
    location_url = store.location_url(image_id)
    body = {"id": image_id, "size": digest.size, "checksum": digest.checksum,
            "os_hash_value": digest.os_hash_value, "location_url": location_url,
            "disk_format": "raw", "container_format": "bare", **extra}
    answer = await _post(session, config, f"/edgesync/v1/sites/{config.name}/images", body)
    return Registered(image_id, location_url, str(answer["task_id"]))


async def _post(session: aiohttp.ClientSession, config: AgentConfig, path: str, body: Any) -> Any:
    url = config.hub_url + path
    try:
        token = await HubToken(config).refresh()
        async with session.post(url, json=body, headers={AUTH_HEADER: token}) as resp:
            answer = await resp.json(content_type=None)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise HubUnreachable(f"can't reach the hub at {config.hub_url}: {str(exc) or type(exc).__name__}") from exc
    except ValueError as exc:  # not JSON: not the hub answering
        raise HubRefused(f"{url} did not answer with JSON ({exc})") from exc
    if status != 201:
        message = answer.get("error", {}).get("message") if isinstance(answer, dict) else None
        raise HubRefused(f"the hub refused: HTTP {status}: {message or answer}")
    return answer
