"""The definitions of every metric edgesync exposes: names, kinds, help, labels, buckets.

Plain data, kept apart from the registries and collectors in `edgesync.metrics` so
dashboards and tests can read them, and so that module stays one concern.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgesync.errors import FailureReason


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def series_names(self) -> set[str]:
        """The names its samples carry in the exposition (what PromQL sees)."""
        if self.kind == "histogram":
            return {f"{self.name}_bucket", f"{self.name}_count", f"{self.name}_sum"}
        return {self.name}


LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
COPY_BUCKETS_S = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
LAG_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Why a copy failed, as a closed set (the failure taxonomy's, edgesync.errors).
FAILURE_REASONS = tuple(reason.value for reason in FailureReason)
COPY_OUTCOMES = ("success", "failure")
DIGEST_KINDS = ("chunk", "image")

# Both daemons
API_REQUESTS = Spec("edgesync_api_requests_total", "counter",
                    "HTTP requests answered, by route template, method and status.",
                    ("route", "method", "status"))
API_DURATION = Spec("edgesync_api_request_duration_seconds", "histogram",
                    "Time to answer an HTTP request (streamed bodies included), by route template, method "
                    "and status.", ("route", "method", "status"), LATENCY_BUCKETS_S)
REPLICATED_BYTES = Spec("edgesync_replicated_bytes_total", "counter",
                        "Data bytes copies wrote into a site's store (holes are never written).", ("site",))
TRANSFER_BYTES = Spec("edgesync_transfer_bytes_total", "counter",
                      "Image bytes received over HTTP (transfer protocol ranges, refetches included), "
                      "by the site they are copied to.", ("site",))
DIGEST_MISMATCHES = Spec("edgesync_digest_mismatches_total", "counter",
                         "Data that failed verification: a range against its sha256 (kind=chunk) or a "
                         "whole copy against os_hash_value (kind=image).", ("site", "kind"))
SERVED_BYTES = Spec("edgesync_transfer_served_bytes_total", "counter",
                    "Image bytes this daemon served over HTTP to other sites (transfer protocol ranges).")
SERVED_RANGES = Spec("edgesync_transfer_served_ranges_total", "counter",
                     "Transfer protocol ranges this daemon served to other sites.")
SHARED_RANGES = Spec("edgesync_transfer_shared_ranges_total", "counter",
                     "Of the ranges served, those answered from a read made for another site's request "
                     "(sites pulling one image at once share each range's read and digest).")
SENT_BYTES = Spec("edgesync_transfer_sent_bytes_total", "counter",
                  "Bytes of the data bodies this daemon sent to other sites, as sent: zstd frames where "
                  "a range was compressed (compare with edgesync_transfer_served_bytes_total).")
SITE_REQUESTS_IN_FLIGHT = Spec("edgesync_transfer_site_requests_in_flight", "gauge",
                               "Data requests of a site the hub is serving now (at most [transfers] "
                               "per_site_concurrency).", ("site",))
SITE_REQUESTS_IN_FLIGHT_MAX = Spec("edgesync_transfer_site_requests_in_flight_max", "gauge",
                                   "The most data requests of a site the hub served at once since it started.",
                                   ("site",))
REQUESTS_WAITED = Spec("edgesync_transfer_requests_waited_total", "counter",
                       "Data requests that waited for their site's turn ([transfers] per_site_concurrency).")
EGRESS_BYTES = Spec("edgesync_transfer_egress_bytes_total", "counter",
                    "Data body bytes the hub wrote to sites through its egress limit ([transfers] "
                    "egress_limit_mbps; counted when unlimited too).")
STORE_USED = Spec("edgesync_store_used_bytes", "gauge",
                  "Bytes used where the store keeps its copies (file: the filesystem; rbd: the pool).",
                  ("store",))
STORE_FREE = Spec("edgesync_store_free_bytes", "gauge",
                  "Bytes still free where the store keeps its copies.", ("store",))

# The hub
COPY_DURATION = Spec("edgesync_copy_duration_seconds", "histogram",
                     "Time from the hub starting a copy to a site until it finished, by outcome.",
                     ("site", "outcome"), COPY_BUCKETS_S)
COPY_FAILURES = Spec("edgesync_copy_failures_total", "counter",
                     "Copies that failed, by site and reason.", ("site", "reason"))
COPIES_IN_FLIGHT = Spec("edgesync_copies_in_flight", "gauge",
                        "Copies the hub has started to a site and not finished (waiting for its agent included).",
                        ("site",))
SITE_UP = Spec("edgesync_site_up", "gauge",
               "1 if the site's agent is online, heartbeating and correctly configured, else 0.", ("site",))
HEARTBEAT_AGE = Spec("edgesync_site_heartbeat_age_seconds", "gauge",
                     "Seconds since the hub last heard the site's agent.", ("site",))
STORE_COPIES = Spec("edgesync_store_copies", "gauge",
                    "Published image copies each store holds, per the hub's catalog.", ("store",))
OUTBOX_DEPTH = Spec("edgesync_outbox_depth", "gauge",
                    "Commands to agents not yet accepted by the broker.")
OUTBOX_OLDEST_AGE = Spec("edgesync_outbox_oldest_age_seconds", "gauge",
                         "Age of the oldest command still waiting in the outbox (0 when empty).")
EVENT_LAG = Spec("edgesync_event_lag_seconds", "histogram",
                 "Time from an agent stamping a heartbeat to the hub handling it (includes clock skew).",
                 ("site",), LAG_BUCKETS_S)

# An agent
TASKS_QUEUED = Spec("edgesync_tasks_queued", "gauge",
                    "Tasks the agent accepted that wait for a copy slot or for the task before them.",
                    ("site",))
TASKS_IN_FLIGHT = Spec("edgesync_tasks_in_flight", "gauge", "Tasks the agent is working on now.", ("site",))
COPY_RESUMES = Spec("edgesync_copy_resumes_total", "counter",
                    "Copies that went on from their journal's checkpoint instead of starting over.", ("site",))
AGENT_OUTBOX_DEPTH = Spec("edgesync_agent_outbox_depth", "gauge",
                          "Task results the agent owes the hub (not yet acknowledged by the broker).", ("site",))
BROKER_CONNECTED = Spec("edgesync_broker_connected", "gauge",
                        "1 while the agent is connected to the broker.", ("site",))

SPECS: tuple[Spec, ...] = (
    API_REQUESTS, API_DURATION, REPLICATED_BYTES, TRANSFER_BYTES, DIGEST_MISMATCHES, SERVED_BYTES, SERVED_RANGES,
    SHARED_RANGES, SENT_BYTES, STORE_USED, STORE_FREE,
    SITE_REQUESTS_IN_FLIGHT, SITE_REQUESTS_IN_FLIGHT_MAX, REQUESTS_WAITED, EGRESS_BYTES,
    COPY_DURATION, COPY_FAILURES, COPIES_IN_FLIGHT, SITE_UP, HEARTBEAT_AGE, STORE_COPIES, OUTBOX_DEPTH,
    OUTBOX_OLDEST_AGE, EVENT_LAG,
    TASKS_QUEUED, TASKS_IN_FLIGHT, COPY_RESUMES, AGENT_OUTBOX_DEPTH, BROKER_CONNECTED,
)


def series_names() -> set[str]:
    """Every series name edgesync's own metrics expose (dashboards use these)."""
    return {name for spec in SPECS for name in spec.series_names()}
