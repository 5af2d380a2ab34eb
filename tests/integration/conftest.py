"""Fixtures for tests through the real listener: against a recording upstream (tests/recorder.py), against
a test STS and signature-verifying upstream on a fake clock (tests/fakeaws.py), and the role the tests of
fronted services (sts, sns, iam, ecr, redshift) assume in the emulator."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

from proxy.app import create_app
from proxy.credentials import static_fetch
from proxy.local import ACCOUNT_ID, DEMO_USER, policy_document
from tests.fakeaws import FakeAWS
from tests.recorder import RecordingUpstream, recorder_config
from tests.support import ServerThread

# The role of the tests that front services other than Secrets Manager (:func:`passthrough_role`).
PASS_ROLE = "query-passthrough"
PASS_ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/{PASS_ROLE}"

# The credentials the proxy signs with against the recording upstream; tests look for them in logs.
ACCESS_KEY = "ASIARECORDERKEY12345"
SECRET_KEY = "recorder/secret+access/key0123456789ABCD"
SESSION_TOKEN = "recorder-session-token-IQoJb3JpZ2luX2VjEHaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"


@pytest.fixture
def recording(tmp_path: Any) -> Iterator[RecordingUpstream]:
    with RecordingUpstream(str(tmp_path)) as upstream:
        yield upstream


StartRecorded = Callable[..., ServerThread]


@pytest.fixture
def start_recorded(recording: RecordingUpstream) -> Iterator[StartRecorded]:
    """``start_recorded(**sections)`` runs the proxy against the recording upstream with fixed credentials
    (:data:`ACCESS_KEY` ...); ``ssl_context=`` serves the listener over TLS. Stopped after the test."""
    started: list[ServerThread] = []

    def start(ssl_context: ssl.SSLContext | None = None, **sections: Any) -> ServerThread:
        cfg = recorder_config(recording, **sections)
        fetch = static_fetch(ACCESS_KEY, SECRET_KEY, SESSION_TOKEN)
        server = ServerThread(lambda: create_app(cfg, fetch=fetch), ssl_context=ssl_context).__enter__()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.__exit__(None, None, None)


@pytest.fixture(scope="session")
def listener_ca() -> trustme.CA:
    """The CA of the proxy's own TLS listener in tests."""
    return trustme.CA()


@pytest.fixture(scope="session")
def listener_tls(listener_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``listen.tls`` files for 127.0.0.1/localhost/::1 and the CA file that verifies them."""
    root = tmp_path_factory.mktemp("listener-tls")
    cert = listener_ca.issue_cert("127.0.0.1", "localhost", "::1")
    files = {"cert_file": str(root / "cert.pem"), "key_file": str(root / "key.pem"), "ca_file": str(root / "ca.pem")}
    cert.cert_chain_pems[0].write_to_path(files["cert_file"])
    cert.private_key_pem.write_to_path(files["key_file"])
    listener_ca.cert_pem.write_to_path(files["ca_file"])
    return files


@pytest.fixture(scope="session")
def client_tls(listener_tls: dict[str, str]) -> ssl.SSLContext:
    """A verifying client context for the proxy's TLS listener."""
    return ssl.create_default_context(cafile=listener_tls["ca_file"])


@pytest.fixture(scope="session")
def fake_aws_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def aws(tmp_path: Any, fake_aws_ca: trustme.CA, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAWS]:
    """A test STS and a signature-verifying test upstream over TLS, on a fake clock (:class:`FakeAWS`)."""
    world = FakeAWS(tmp_path, fake_aws_ca, monkeypatch)
    try:
        yield world
    finally:
        world.close()


@pytest.fixture(scope="session")
def passthrough_role(emulator: Any) -> str:
    """A role the demo user may assume, allowed SNS, STS, IAM, ECR, Redshift and Secrets Manager."""
    iam = emulator.direct("iam")
    try:
        iam.get_role(RoleName=PASS_ROLE)
        return PASS_ROLE_ARN
    except iam.exceptions.NoSuchEntityException:
        pass
    iam.create_role(
        RoleName=PASS_ROLE,
        AssumeRolePolicyDocument=policy_document(
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:user/{DEMO_USER}"},
                "Action": ["sts:AssumeRole", "sts:TagSession"],
            }
        ),
    )
    iam.put_role_policy(
        RoleName=PASS_ROLE,
        PolicyName="passthrough",
        PolicyDocument=policy_document(
            {
                "Effect": "Allow",
                "Action": ["sns:*", "sts:*", "iam:*", "ecr:*", "redshift:*", "secretsmanager:*"],
                "Resource": "*",
            }
        ),
    )
    return PASS_ROLE_ARN
