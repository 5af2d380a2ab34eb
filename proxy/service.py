"""One upstream service as the pipeline sees it: everything prepared once at start-up and shared by all
requests (endpoint, translator, policy, rules, transport, credentials, secret cache), and the regions an SDK
call may be sent to (``upstream.region`` and ``upstream.regions``, each with its own endpoint and transport)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from . import errors
from .attempts import AttemptPolicy, RetryQuota
from .cache import SecretCache
from .config import LimitsConfig, UpstreamConfig
from .credentials import CredentialManager
from .guard import CredentialGuard
from .listing import Listings
from .metrics import Metrics
from .models import Endpoint
from .policy import Policy
from .signing import ClockSkew
from .translate import Translator
from .upstream import Upstream
from .validate import RuleSettings


@dataclass(frozen=True, slots=True)
class Regional:
    """One region a call may be sent to: its endpoint (botocore's resolution for that region, the SigV4 scope),
    its own transport, so that one region's connection pool never carries another region's requests, its own
    secret cache entries, so that the same name in two regions never shares one (the region is part of the
    cache key; the stamp table is the process's, so a write drops a name in every region: a replica carries its
    primary's name), and its own listings, whose NextTokens are bound to its endpoint."""

    endpoint: Endpoint
    upstream: Upstream
    cache: SecretCache
    listings: Listings | None = None


@dataclass(frozen=True, slots=True)
class Service:
    upstream_cfg: UpstreamConfig
    limits: LimitsConfig
    endpoint: Endpoint
    translator: Translator
    policy: Policy
    rules: RuleSettings
    upstream: Upstream
    credentials: CredentialManager
    attempts: AttemptPolicy
    metrics: Metrics
    clock_skew: ClockSkew
    retry_quota: RetryQuota  # shared by every listener of the process
    cache: SecretCache
    # operations that hand out credentials (docs/interface.md, "Policy")
    guard: CredentialGuard = CredentialGuard(frozenset())
    # listings the proxy pages itself under policy.allow_secrets (proxy/listing.py); None: no allow_secrets
    listings: Listings | None = None
    # upstream.regions: region -> endpoint and transport; ``endpoint`` / ``upstream`` above are upstream.region's
    regions: Mapping[str, Regional] = field(default_factory=dict)

    def regional(self, region: str | None) -> Regional:
        """Where a call for ``region`` goes: None or ``upstream.region`` is the service's own endpoint and
        transport, a region of ``upstream.regions`` its own. Raises RegionNotServed for any other, naming both
        (docs/interface.md, "SDK calls")."""
        if region is None or region == self.endpoint.region:
            return Regional(self.endpoint, self.upstream, self.cache, self.listings)
        found = self.regions.get(region)
        if found is None:
            served = ", ".join([self.endpoint.region, *self.regions])
            raise errors.RegionNotServed(
                f"the call is signed for region {region}, and this listener serves {served}: set the SDK's region "
                f"to {self.endpoint.region}, or add {region} to upstream.regions"
            )
        return found

    def caches(self) -> list[SecretCache]:
        """The secret cache of every region served (their refreshers start and stop with the listener)."""
        return [self.cache, *(regional.cache for regional in self.regions.values())]

    def transports(self) -> list[Upstream]:
        """Every distinct transport of the service (the lifecycle starts and closes each once)."""
        out = [self.upstream]
        for regional in self.regions.values():
            if all(regional.upstream is not t for t in out):
                out.append(regional.upstream)
        return out

    @property
    def protocol(self) -> str:
        """The upstream's protocol from botocore's model: ``json`` (translated) or ``query`` (passed through)."""
        protocol: str = self.translator.service_model.protocol
        return protocol
