"""What a daemon's data routes served: plain integer attributes that only grow.

Each daemon owns one (`data_routes(counters=...)`) and its `/metrics` exports
them as Prometheus counters under the names in the comments; the agents
benchmark reads them there to set the hub's work against the agents'. Data
bodies only: the extent-map JSON and HTTP headers are not counted. (What a
pull receives is counted by `HttpSource`'s observer:
edgesync_transfer_bytes_total.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServedCounters:
    served_bytes_total: int = 0  # edgesync_transfer_served_bytes_total: data bodies answered with
    served_ranges_total: int = 0  # edgesync_transfer_served_ranges_total: data responses
    shared_ranges_total: int = 0  # edgesync_transfer_shared_ranges_total: of those, answered by another's read
    sent_bytes_total: int = 0  # edgesync_transfer_sent_bytes_total: the bodies as sent (zstd frames where compressed)
