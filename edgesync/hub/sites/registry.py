"""What the hub knows of each site's agent: up or down, last heartbeat, the
availability zone it announced, what it is working on, its free space.

Fed by the agents' retained status and their heartbeats. A site is up when
its last status said online and a heartbeat arrived within `stale_after_s`.
The hub checks the AZ an agent announces against the site's config the first
time it hears from it: a mismatch marks the site misconfigured, and the site
is not used until an agent with the right config comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgesync.bus.messages import Heartbeat, SiteState, SiteStatus
from edgesync.config import SiteConfig


@dataclass
class SiteView:
    name: str
    availability_zone: str
    role: str
    online: bool = False
    announced_az: str | None = None
    problem: str | None = None
    last_heartbeat: float | None = None
    in_flight: tuple[str, ...] = ()
    queued: tuple[str, ...] = ()
    heartbeats: int = 0  # how many arrived: lets a waiter tell a new one from the last
    free_bytes: int | None = None
    store_fsid: str | None = None  # as the agent announced its cluster's
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def heartbeat_age_s(self, now: float) -> float | None:
        return None if self.last_heartbeat is None else max(0.0, now - self.last_heartbeat)


class SiteRegistry:
    def __init__(self, sites: tuple[SiteConfig, ...], *, stale_after_s: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._sites = {s.name: SiteView(s.name, s.availability_zone, s.role) for s in sites if not s.is_central}
        self._zone_owner = {s.availability_zone: s.name for s in sites}
        self.stale_after_s = stale_after_s
        self._clock = clock

    def __contains__(self, site: str) -> bool:
        return site in self._sites

    def view(self, site: str) -> SiteView:
        return self._sites[site]

    def on_status(self, site: str, status: SiteStatus) -> str | None:
        """Record an online/offline status; returns a problem if the agent's AZ
        doesn't match the site's config."""
        view = self._sites.get(site)
        if view is None:
            return f"status from unknown site {site!r}"
        view.online = status.state == SiteState.ONLINE
        if status.availability_zone is not None:
            view.announced_az = status.availability_zone
            view.problem = self._az_problem(view, status.availability_zone)
        if status.store_fsid:
            view.store_fsid = status.store_fsid
        if view.online:
            view.last_heartbeat = self._clock()
        self._notify(view)
        return view.problem

    def _az_problem(self, view: SiteView, announced: str) -> str | None:
        if announced == view.availability_zone:
            return None
        owner = self._zone_owner.get(announced)
        whose = f", which is site {owner}'s zone (an AZ maps to exactly one store)" if owner else ""
        return (f"agent of site {view.name} announced availability zone {announced!r}{whose}, "
                f"but the hub's config pairs {view.name} with {view.availability_zone!r}; fix the "
                "agent's site file (Nova and Cinder AZ must equal the site's one AZ)")

    def on_heartbeat(self, site: str, beat: Heartbeat) -> None:
        view = self._sites.get(site)
        if view is None:
            return
        view.last_heartbeat = self._clock()
        view.in_flight = tuple(beat.in_flight)
        view.queued = tuple(beat.queued)
        view.heartbeats += 1
        view.free_bytes = beat.free_bytes
        self._notify(view)

    def is_up(self, site: str) -> bool:
        view = self._sites.get(site)
        if view is None or not view.online or view.problem is not None:
            return False
        age = view.heartbeat_age_s(self._clock())
        return age is not None and age <= self.stale_after_s

    async def wait_change(self, site: str, timeout_s: float) -> None:
        """Return when anything about `site` changes, or after `timeout_s`."""
        view = self._sites[site]
        view.changed.clear()
        try:
            await asyncio.wait_for(view.changed.wait(), timeout_s)
        except TimeoutError:
            pass

    def snapshot(self) -> list[dict[str, Any]]:
        return [self.describe(name) for name in self._sites]

    def describe(self, site: str) -> dict[str, Any]:
        """What the hub knows of `site`'s agent now (`GET /edgesync/v1/sites`)."""
        v = self._sites[site]
        return {
            "name": v.name, "availability_zone": v.availability_zone, "up": self.is_up(v.name),
            "online": v.online, "problem": v.problem, "heartbeat_age_s": v.heartbeat_age_s(self._clock()),
            "in_flight": list(v.in_flight), "free_bytes": v.free_bytes, "store_fsid": v.store_fsid,
        }

    @staticmethod
    def _notify(view: SiteView) -> None:
        view.changed.set()
