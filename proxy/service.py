"""One upstream service as the pipeline sees it: everything prepared once at start-up and shared by all
requests (endpoint, translator, policy, rules, transport, credentials, secret cache)."""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def protocol(self) -> str:
        """The upstream's protocol from botocore's model: ``json`` (translated) or ``query`` (passed through)."""
        protocol: str = self.translator.service_model.protocol
        return protocol
