"""Sites as the hub sees them: the `Site` interface and its two kinds
(`local.LocalSite`, the hub writes the store; `agent.AgentSite`, the site's
agent does), and the registry of what the agents report (`registry`)."""

from __future__ import annotations

from edgesync.hub.sites.base import CentralSite, Site, Sites, VerifiedCopy
from edgesync.hub.sites.registry import SiteRegistry, SiteView

__all__ = ["CentralSite", "Site", "SiteRegistry", "SiteView", "Sites", "VerifiedCopy"]
