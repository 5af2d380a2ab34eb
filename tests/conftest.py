"""Shared fixtures: a clean AWS environment, moto's server over TLS with signature checking on, the proxy
on a real port, and the legacy (awsQuery, unsigned) client."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import botocore.loaders
import botocore.session
import pytest

from proxy.app import create_app
from proxy.local import REGION, DemoAccount, MotoServer, policy_document, seed_demo
from tests.support import ServerThread, legacy_client, proxy_config

pytest_plugins = ("tests.faults",)  # fault servers and their fixtures

_SESSION_ENV = pytest.MonkeyPatch()


def clear_aws(monkeypatch: pytest.MonkeyPatch, empty: str) -> None:
    """No ``AWS_*`` from the developer's shell, no ~/.aws files (``empty`` instead), never instance metadata."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", empty)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", empty)


def pytest_configure(config: pytest.Config) -> None:
    """Clear ``AWS_*`` for the whole run, before collection (modules that read botocore's models at import)
    and before any fixture, session-scoped ones included (the emulator): a stale ``AWS_PROFILE`` exported in
    the shell would otherwise fail them with ProfileNotFound. Restored when the run ends.

    Every botocore session of the run also shares one data loader per ``AWS_DATA_PATH``: each proxy a test
    builds, and each client it uses, would otherwise parse ``endpoints.json`` and the service models again
    (40% of the suite's CPU). A process of the proxy loads them once; the loader's cache holds what it parsed,
    read-only, as it already does for every client of one session."""
    clear_aws(_SESSION_ENV, os.devnull)
    _SESSION_ENV.setattr(botocore.session, "create_loader", functools.cache(botocore.loaders.create_loader))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker more than the cores this process may run on. A third of the suite's time is
    waiting (deadlines, slow readers, processes starting), which the extra worker fills; measured on 2 cores
    (docs/testing.md): 158 s with 2 workers, 138 s with 3, no faster with 4."""
    return len(os.sched_getaffinity(0)) + 1


def pytest_unconfigure(config: pytest.Config) -> None:
    _SESSION_ENV.undo()


@pytest.fixture(autouse=True)
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same for each test, so that what one test sets (``demo_env``, ``static_keys``) is gone for the
    next."""
    clear_aws(monkeypatch, str(tmp_path_factory.getbasetemp() / "no-aws-config"))


@pytest.fixture(autouse=True)
def forget_applications() -> Iterator[None]:
    """After each test, drop the applications aiohttp's middleware cache keeps alive: ``web_app`` memoizes
    the middleware chain per (handler, apps) in an ``lru_cache`` of 1,024 entries, so every proxy a test
    built (its botocore clients, models, pools and cache) stayed in memory: 5.7 GB by the end of a serial
    run, paid again in every full collection and in a minute of interpreter teardown."""
    yield
    from aiohttp import web_app

    cached = getattr(web_app, "_cached_build_middleware", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()


class Emulator:
    """moto's server plus the seeded identities: ``demo`` (may assume the demo role) and an admin user for
    direct (JSON 1.1, signed) calls that bypass the proxy."""

    def __init__(self, server: MotoServer, demo: DemoAccount, admin_key: dict[str, str]) -> None:
        self.server = server
        self.demo = demo
        self.admin_key = admin_key

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ca_file(self) -> str:
        return self.server.ca_file

    def direct(self, service: str = "secretsmanager", region: str = REGION) -> Any:
        """A signed botocore JSON client straight to the emulator, as the admin user, in ``region``."""
        return self.server.client(
            service, self.admin_key["AccessKeyId"], self.admin_key["SecretAccessKey"], region=region
        )


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    server = MotoServer(str(tmp_path_factory.mktemp("moto")))
    server.start()
    try:
        demo = seed_demo(server)
        iam = server.client("iam")
        iam.create_user(UserName="test-admin")
        iam.put_user_policy(
            UserName="test-admin",
            PolicyName="all",
            PolicyDocument=policy_document({"Effect": "Allow", "Action": "*", "Resource": "*"}),
        )
        admin_key = iam.create_access_key(UserName="test-admin")["AccessKey"]
        server.set_auth(True)
        yield Emulator(server, demo, admin_key)
    finally:
        server.stop()


@pytest.fixture
def demo_env(monkeypatch: pytest.MonkeyPatch, emulator: Emulator) -> None:
    """The environment a pod would have: the demo user's keys as source credentials, STS at the emulator."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", emulator.demo.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", emulator.demo.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", emulator.url)
    monkeypatch.setenv("AWS_CA_BUNDLE", emulator.ca_file)
    monkeypatch.setenv("AWS_REGION", REGION)


StartProxy = Callable[..., ServerThread]


@pytest.fixture
def start_proxy(emulator: Emulator, demo_env: None) -> Iterator[StartProxy]:
    """``start_proxy(**sections)`` runs the proxy (assuming the demo role) against the emulator on a real
    port; ``sections`` override the config (``policy={"allow_actions": ["*"]}``). Stopped after the test."""
    started: list[ServerThread] = []

    def start(**sections: Any) -> ServerThread:
        cfg = proxy_config(emulator.server, **sections)
        server = ServerThread(lambda: create_app(cfg)).__enter__()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.__exit__(None, None, None)


@pytest.fixture
def proxy(start_proxy: StartProxy) -> ServerThread:
    """The proxy with every action allowed."""
    return start_proxy(policy={"allow_actions": ["*"]})


@pytest.fixture
def legacy(proxy: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The legacy app: botocore speaking awsQuery, unsigned, to the proxy."""
    return legacy_client(proxy.url, str(tmp_path_factory.getbasetemp()))
