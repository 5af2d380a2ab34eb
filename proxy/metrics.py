"""Prometheus metrics (prometheus-client), prefix ``query_signing_proxy_``, one registry per app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

M = TypeVar("M", Counter, Histogram, Gauge)

PREFIX = "query_signing_proxy"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# the request and the upstream duration share their buckets, so the two histograms compare bucket by bucket
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    request_duration: Histogram
    upstream_duration: Histogram
    upstream_attempts: Histogram
    in_flight: Gauge
    credential_expiry: Gauge
    credential_refreshes: Counter
    cache_hits: Counter
    cache_misses: Counter
    cache_evictions: Counter
    cache_entries: Gauge
    cache_bytes: Gauge
    cache_refreshes: Counter
    cache_version_checks: Counter
    retries_refused: Counter
    retry_quota_tokens: Gauge
    _children: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict, repr=False, compare=False)

    def child(self, metric: M, *values: str) -> M:
        """``metric.labels(*values)``, looked up once per label set (prometheus-client validates the values
        and takes a lock on every ``labels()`` call; the proxy's label sets are few: actions x codes)."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    @classmethod
    def create(cls) -> Metrics:
        r = CollectorRegistry()
        return cls(
            registry=r,
            requests=Counter(
                f"{PREFIX}_requests",
                "Query requests answered, by action and error code",
                ["action", "code"],
                registry=r,
            ),
            request_duration=Histogram(
                f"{PREFIX}_request_duration_seconds",
                "Time to answer a request",
                ["action"],
                registry=r,
                buckets=SECONDS_BUCKETS,
            ),
            upstream_duration=Histogram(
                f"{PREFIX}_upstream_duration_seconds",
                "Time spent waiting on the upstream for one request, all attempts",
                ["action"],
                registry=r,
                buckets=SECONDS_BUCKETS,
            ),
            upstream_attempts=Histogram(
                f"{PREFIX}_upstream_attempts",
                "Upstream attempts per request",
                ["action"],
                registry=r,
                buckets=(1, 2, 3, 4, 5, 10),
            ),
            in_flight=Gauge(f"{PREFIX}_requests_in_flight", "Query requests being answered", registry=r),
            credential_expiry=Gauge(
                f"{PREFIX}_credential_expiry_seconds",
                "Seconds until the signing credentials expire",
                registry=r,
            ),
            credential_refreshes=Counter(
                f"{PREFIX}_credential_refreshes", "Credential refreshes, by result", ["result"], registry=r
            ),
            cache_hits=Counter(
                f"{PREFIX}_cache_hits",
                "Secret reads answered from the cache; stale: expired, served while the upstream failed",
                ["freshness"],
                registry=r,
            ),
            cache_misses=Counter(
                f"{PREFIX}_cache_misses", "Cacheable secret reads that needed the upstream", registry=r
            ),
            cache_evictions=Counter(
                f"{PREFIX}_cache_evictions",
                "Cache entries removed, by reason (capacity, bytes, expired, invalidated)",
                ["reason"],
                registry=r,
            ),
            cache_entries=Gauge(f"{PREFIX}_cache_entries", "Secret values held in the cache", registry=r),
            cache_bytes=Gauge(f"{PREFIX}_cache_bytes", "Bytes of the answers held in the cache", registry=r),
            cache_refreshes=Counter(
                f"{PREFIX}_cache_refreshes",
                "Refresh-ahead of cache entries, by result (fetched, unchanged, adopted, failed, discarded)",
                ["result"],
                registry=r,
            ),
            cache_version_checks=Counter(
                f"{PREFIX}_cache_version_checks",
                "DescribeSecret calls made at refresh (cache.version_check), by result (unchanged, changed, error)",
                ["result"],
                registry=r,
            ),
            retries_refused=Counter(
                f"{PREFIX}_retries_refused",
                "Upstream retries not made because the process's retry budget was spent",
                registry=r,
            ),
            retry_quota_tokens=Gauge(
                f"{PREFIX}_retry_quota_tokens",
                "Tokens left in the process's retry budget (500 at most; a retry costs 5, 10 after a timeout)",
                registry=r,
            ),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
