"""A pytest plugin for bench/moto_suite.py: moto's own Secrets Manager tests, in moto's server mode, with their
Secrets Manager clients pointed at the proxy.

Loaded into the pytest run of moto's tests (``-p moto_suite_plugin``), it imports nothing of this repository
(moto's tests are a package called ``tests`` too). The environment says what to do:

- ``MOTO_SUITE_MODE``: ``direct`` (nothing changed: moto's server mode as moto runs it), ``sdk`` (the tests'
  own signed JSON 1.1 clients, with the proxy as their endpoint) or ``query`` (an unsigned awsQuery client built
  from a query-protocol copy of the model in ``MOTO_SUITE_QUERY_MODELS``: the legacy app);
- ``MOTO_SUITE_ENDPOINTS``: JSON, region -> proxy URL (one listener per region), ``"*"`` for any region.

Every other client (``sts``, ``iam``, ``lambda``) and moto's reset call still go to moto's server
(``TEST_SERVER_MODE_ENDPOINT``): the proxy fronts Secrets Manager only.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

MODE = os.environ.get("MOTO_SUITE_MODE", "direct")
ENDPOINTS: dict[str, str] = json.loads(os.environ.get("MOTO_SUITE_ENDPOINTS", "{}"))
QUERY_MODELS = os.environ.get("MOTO_SUITE_QUERY_MODELS", "")
# A test that waits for something this machine cannot give (a rotation Lambda needs Docker) fails after this long,
# in every mode alike, instead of polling for ever.
TEST_TIMEOUT_SECONDS = int(os.environ.get("MOTO_SUITE_TEST_TIMEOUT", "60"))


def _timed_out(signum: int, frame: Any) -> None:
    raise TimeoutError(f"the test ran longer than {TEST_TIMEOUT_SECONDS} s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: Any) -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _timed_out)
    signal.alarm(TEST_TIMEOUT_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _region(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return kwargs.get("region_name") or (args[1] if len(args) > 1 else None) or os.environ["AWS_DEFAULT_REGION"]


def pytest_configure(config: Any) -> None:
    if MODE == "direct":
        return
    import boto3
    import boto3.session
    from botocore import UNSIGNED
    from botocore.config import Config

    real_client = boto3.client

    def client(*args: Any, **kwargs: Any) -> Any:
        service = args[0] if args else kwargs.get("service_name")
        if service != "secretsmanager":
            return real_client(*args, **kwargs)
        region = _region(args, kwargs)
        kwargs["endpoint_url"] = ENDPOINTS.get(region) or ENDPOINTS["*"]
        if MODE == "sdk":
            return real_client(*args, **kwargs)
        session = boto3.session.Session()
        session._session.get_component("data_loader").search_paths.insert(0, QUERY_MODELS)
        unsigned = Config(signature_version=UNSIGNED)
        kwargs["config"] = kwargs["config"].merge(unsigned) if kwargs.get("config") else unsigned
        return session.client(*args, **kwargs)

    # moto's server mode wraps boto3.client when each test starts (ServerModeMockAWS), calling what it finds
    # there now: this wrapper, which then overrides the endpoint moto chose for Secrets Manager clients.
    boto3.client = client
