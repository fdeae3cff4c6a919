"""What crossed the transfer protocol in this process, since it started.

Plain integer attributes that only grow, so a metrics exporter can publish
them as Prometheus counters under the names in the comments, and the
benchmarks can compare the bytes on the wire with the image's allocated
bytes. Data bodies only: the extent-map JSON and HTTP headers are not counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class TransferCounters:
    served_bytes_total: int = 0  # edgesync_transfer_served_bytes_total: data bodies data_routes answered with
    served_ranges_total: int = 0  # edgesync_transfer_served_ranges_total: data responses sent
    shared_ranges_total: int = 0  # edgesync_transfer_shared_ranges_total: of those, answered by another's read

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


# One per process: the hub and each agent are separate processes.
COUNTERS = TransferCounters()
