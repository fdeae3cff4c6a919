"""`[transfers]` in hub.toml: what the hub allows itself serving copies to
sites (enforced by `serving_limits.ServingLimits`). Here, not in config.py,
so the settings sit with what they set; it imports nothing but errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgesync.errors import ConfigError


@dataclass(frozen=True)
class TransferLimits:
    per_site_concurrency: int = 8  # data requests of one site served at once (an agent asks up to 8)
    egress_limit_mbps: float = 0.0  # all sites together, megabits/s as links are sold; 0 = unlimited

    @property
    def egress_bytes_per_s(self) -> float:
        return self.egress_limit_mbps * 1_000_000 / 8

    @classmethod
    def parse(cls, table: dict[str, Any], where: str) -> TransferLimits:
        """The table's settings, or ConfigError naming `where` and the key."""
        per_site = table.get("per_site_concurrency", cls.per_site_concurrency)
        egress = table.get("egress_limit_mbps", cls.egress_limit_mbps)
        if isinstance(per_site, bool) or not isinstance(per_site, int) or per_site < 1:
            raise ConfigError(f"{where}: 'per_site_concurrency' must be at least 1, got {per_site!r}")
        if isinstance(egress, bool) or not isinstance(egress, (int, float)) or egress < 0:
            raise ConfigError(f"{where}: 'egress_limit_mbps' must be 0 (unlimited) or more, got {egress!r}")
        unknown = sorted(set(table) - {"per_site_concurrency", "egress_limit_mbps"})
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)} "
                              "(per_site_concurrency, egress_limit_mbps)")
        return cls(per_site_concurrency=per_site, egress_limit_mbps=float(egress))
