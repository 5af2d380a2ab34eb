"""``upstream.regions`` (docs/interface.md, "SDK calls"): the region an SDK call was signed for, the config's
checks, and each region's own endpoint, transport and cache. The calls themselves: tests/integration/test_regions.py."""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest

from proxy import errors
from proxy.app import Lifecycle, Shared, build_service
from proxy.config import Config, ConfigError, build, check
from proxy.credentials import CredentialManager, static_fetch
from proxy.metrics import Metrics
from proxy.sdk import signed_region
from proxy.service import Service


def service(**upstream: Any) -> Service:
    cfg: Config = build(Config, {"upstream": {"region": "us-east-1", **upstream}})
    check(cfg)
    shared = Shared(cfg, CredentialManager(static_fetch("k", "s")), Metrics.create(), Lifecycle())
    return build_service(cfg, botocore.session.get_session(), shared)


@pytest.mark.parametrize(
    ("authorization", "region"),
    [
        (
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/eu-west-1/secretsmanager/aws4_request, "
            "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=abc",
            "eu-west-1",
        ),
        ("AWS4-HMAC-SHA256 Credential=AKID/20240101/cn-north-1/secretsmanager/aws4_request,Signature=0", "cn-north-1"),
        (None, None),
        ("", None),
        ("AWS4-HMAC-SHA256 Credential=AKID/20240101//secretsmanager/aws4_request", None),  # no region
        ("AWS4-ECDSA-P256-SHA256 Credential=AKID/20240101/secretsmanager/aws4_request, Signature=0", None),  # SigV4a
        ("AWS AKID:signature", None),  # SigV2
        ("AWS4-HMAC-SHA256 Credential=AKID/20240101/eu west/secretsmanager/aws4_request", None),
        ("AWS4-HMAC-SHA256 Credential=" + "A/" * 5000, None),  # long and broken: refused quickly, no region
    ],
)
def test_the_signed_region_is_the_credential_scopes(authorization: str | None, region: str | None) -> None:
    assert signed_region(authorization) == region


def test_each_region_has_its_own_endpoint_transport_and_cache() -> None:
    svc = service(regions=["eu-west-1", "us-east-1", "ap-southeast-2"])
    assert set(svc.regions) == {"eu-west-1", "ap-southeast-2"}  # upstream.region listed again is itself
    own = svc.regional(None)
    assert own.endpoint.region == "us-east-1" and own.upstream is svc.upstream and own.cache is svc.cache
    assert svc.regional("us-east-1").endpoint == own.endpoint
    eu = svc.regional("eu-west-1")
    assert eu.endpoint.region == "eu-west-1"
    assert eu.endpoint.url == "https://secretsmanager.eu-west-1.amazonaws.com"  # botocore's regional endpoint
    transports = svc.transports()
    assert len(transports) == 3 and len({id(t) for t in transports}) == 3  # one connection pool per region
    caches = [svc.regional(r).cache for r in ("us-east-1", "eu-west-1", "ap-southeast-2")]
    assert len({id(c) for c in caches}) == 3  # the region is part of the cache key ...
    assert all(c.stamps is svc.cache.stamps for c in caches)  # ... and a write stamps a name in every region


def test_each_region_pages_listings_with_its_own_tokens() -> None:
    cfg: Config = build(
        Config, {"upstream": {"region": "us-east-1", "regions": ["eu-west-1"]}, "policy": {"allow_secrets": ["a/*"]}}
    )
    check(cfg)
    shared = Shared(cfg, CredentialManager(static_fetch("k", "s")), Metrics.create(), Lifecycle())
    svc = build_service(cfg, botocore.session.get_session(), shared)
    own, eu = svc.regional(None).listings, svc.regional("eu-west-1").listings
    assert own is not None and eu is not None and own is not eu  # a token names the endpoint it pages


def test_a_region_not_served_is_refused_naming_both() -> None:
    svc = service(regions=["eu-west-1"])
    with pytest.raises(errors.RegionNotServed) as info:
        svc.regional("ap-south-1")
    message = info.value.message
    assert "ap-south-1" in message and "us-east-1" in message and "eu-west-1" in message
    assert "upstream.regions" in message
    assert (info.value.status, info.value.code) == (400, "InvalidRequestException")


@pytest.mark.parametrize(
    ("regions", "error"),
    [
        (["eu-west-1", "eu west"], "upstream.regions[1]: 'eu west' is not a region name"),
        (["eu-west-1", "eu-west-1"], "upstream.regions[1]: eu-west-1 is listed twice"),
        ("eu-west-1", "upstream.regions: must be a list"),
    ],
)
def test_bad_regions_name_the_key(regions: Any, error: str) -> None:
    with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace("]", r"\]")):
        service(regions=regions)
