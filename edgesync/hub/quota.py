"""Per-project quota on stored bytes: Glance's `image_size_total`.

Glance (with `use_keystone_limits`) keeps each project's limit in Keystone's
unified limits, in MiB, and counts a project's usage as the size of each of
its images times the number of its locations: a copy in three stores counts
three times (`user_get_storage_usage`). The hub does the same from
`[hub.quota]` (a default for every project, and projects' own limits; -1 is
unlimited, the default) and its catalog.

It is checked before a stage, an upload and an import (every method,
copy-image included), and a request is refused with Glance's answer to
`LimitExceeded`, a 413, when the project's usage plus what the request is
known to add would be over the limit: the declared `x-openstack-image-size`
of a stage or upload, the staged data times the stores of a glance-direct
import, the image's size times the new stores of a copy. (Glance adds
nothing: it refuses only a project already over, so one request may take it
past its limit; here only a request of unknown size can — a web-download, or
an upload without the header.)

`usage(project)` gives the numbers for `GET /v2/info/usage`.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgesync.catalog import Catalog
from edgesync.config import QuotaConfig
from edgesync.errors import QuotaExceeded

MiB = 1 << 20
UNLIMITED = -1
RESOURCE = "image_size_total"


@dataclass(frozen=True)
class Usage:
    """One resource as /v2/info/usage shows it: Glance's numbers, in MiB."""

    limit: int  # -1: unlimited
    usage: int

    def as_glance(self) -> dict[str, int]:
        return {"limit": self.limit, "usage": self.usage}


class StoredBytesQuota:
    def __init__(self, catalog: Catalog, config: QuotaConfig) -> None:
        self._catalog = catalog
        self._config = config

    def limit_mib(self, project: str) -> int:
        return self._config.projects.get(project, self._config.image_size_total_mib)

    async def usage(self, project: str) -> Usage:
        return Usage(self.limit_mib(project), await self._catalog.stored_bytes(project) // MiB)

    async def enforce(self, project: str | None, *, adding_bytes: int = 0) -> None:
        """QuotaExceeded (413) if `project`'s stored bytes plus `adding_bytes` pass its limit."""
        if project is None:
            return
        limit = self.limit_mib(project)
        if limit == UNLIMITED:
            return
        used = await self._catalog.stored_bytes(project)
        if used + adding_bytes > limit * MiB:
            # Glance's LimitExceeded text, with oslo.limit's detail (in MiB).
            raise QuotaExceeded(
                f"Project {project} is over a limit for [Resource {RESOURCE} is over limit of {limit} "
                f"due to current usage {used // MiB} and delta {-(-adding_bytes // MiB)}] (MiB, "
                "counting each copy in each store); delete images or copies, or ask for a larger "
                "[hub.quota] limit")
