"""``routes:`` in the config (docs/interface.md, "Configuration"): port clashes and each route's service and policy are checked
with the dotted key of the route."""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest

from proxy.app import Lifecycle, Shared, build_service, route_config
from proxy.config import Config, ConfigError, build, check
from proxy.credentials import CredentialManager, static_fetch
from proxy.metrics import Metrics


def config(**data: Any) -> Config:
    cfg: Config = build(Config, {"upstream": {"region": "us-east-1"}, **data})
    check(cfg)
    return cfg


def services(cfg: Config) -> None:
    session = botocore.session.get_session()
    shared = Shared(cfg, CredentialManager(static_fetch("k", "s")), Metrics.create(), Lifecycle())
    build_service(cfg, session, shared)
    for i, route in enumerate(cfg.routes):
        build_service(route_config(cfg, route), session, shared, key=f"routes[{i}]")


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (
            {"routes": [{"port": 8977, "upstream": {"service": "sns"}}]},
            "routes[0].port: 8977 is already taken by listen.port",
        ),
        (
            {
                "routes": [
                    {"port": 9000, "upstream": {"service": "sns"}},
                    {"port": 9000, "upstream": {"service": "sts"}},
                ]
            },
            "routes[1].port: 9000 is already taken by routes[0].port",
        ),
        (
            {"admin": {"host": "0.0.0.0", "port": 9001}, "routes": [{"port": 9001}]},
            "routes[0].port: 9001 is already taken by admin.port",
        ),
        ({"routes": [{"port": 9000, "upstream": {"endpoint_url": "http://x"}}]}, "routes[0].upstream.endpoint_url"),
    ],
)
def test_route_config_errors_name_the_route(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        config(**data)


@pytest.mark.parametrize(
    ("route", "key"),
    [
        (
            {"port": 9000, "upstream": {"service": "s3", "region": "us-east-1"}},
            r"routes\[0\]\.upstream\.service: s3 speaks rest-xml",
        ),
        ({"port": 9000, "upstream": {"service": "nosuch", "region": "us-east-1"}}, r"routes\[0\]\.upstream\.service"),
        (
            {
                "port": 9000,
                "upstream": {"service": "sns", "region": "us-east-1"},
                "policy": {"allow_actions": ["GetSecretValue"]},
            },
            r"routes\[0\]\.policy\.allow_actions\[0\]",
        ),
        # issue 13: the read-only default is Secrets Manager's; any other service must list its operations
        (
            {"port": 9000, "upstream": {"service": "ecr", "region": "us-east-1"}},
            r"^routes\[0\]\.policy\.allow_actions: ",
        ),
        (
            {"port": 9000, "upstream": {"service": "sns", "region": "us-east-1"}, "policy": {"allow_secrets": ["a"]}},
            r"^routes\[0\]\.policy\.allow_actions: required for sns",
        ),
    ],
)
def test_route_services_are_checked_against_botocore(route: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        services(config(routes=[route]))


def test_the_main_service_may_be_an_awsquery_one_and_others_are_refused() -> None:
    services(config(upstream={"service": "sts", "region": "us-east-1"}, policy={"allow_actions": ["Get*"]}))
    with pytest.raises(ConfigError, match=r"^upstream\.service: lambda speaks rest-json"):
        services(config(upstream={"service": "lambda", "region": "us-east-1"}))


@pytest.mark.parametrize("service", ["sts", "ecr", "lightsail", "kms"])
def test_a_main_service_other_than_secrets_manager_needs_allow_actions(service: str) -> None:
    with pytest.raises(ConfigError, match=rf"^policy\.allow_actions: required for {service} "):
        services(config(upstream={"service": service, "region": "us-east-1"}))
    services(config(upstream={"service": service, "region": "us-east-1"}, policy={"allow_actions": ["*"]}))
    services(config(upstream={"service": "secretsmanager", "region": "us-east-1"}))  # the default stays


def test_a_route_inherits_everything_but_its_upstream_and_policy() -> None:
    cfg = config(
        limits={"max_body_bytes": 4096},
        routes=[{"port": 9000, "upstream": {"service": "sns"}, "policy": {"allow_actions": ["ListTopics"]}}],
    )
    route = route_config(cfg, cfg.routes[0])
    assert route.limits.max_body_bytes == 4096 and route.credentials == cfg.credentials
    assert route.upstream.service == "sns" and route.policy == cfg.routes[0].policy
    assert route.routes == ()
