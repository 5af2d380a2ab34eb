"""SDK callers (issue 9): an unmodified botocore JSON 1.1 client with placeholder keys and the proxy as its
endpoint works against moto with signature checking on, for the same operations as the parity test. The
app's own signature is thrown away; the proxy re-signs with the role and relays the JSON answer unchanged;
the proxy's own errors reach the SDK as JSON 1.1 errors."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from proxy.local import DEMO_SECRET, DEMO_SECRET_VALUE, REGION, clean_aws_environ
from tests.integration.test_parity import CASES, check_parity, ensure_rotation_lambda
from tests.support import ServerThread, raw_request, sdk_client

JSON_TYPE = "application/x-amz-json-1.1"


@pytest.fixture
def sdk(proxy: ServerThread) -> Any:
    return sdk_client(proxy.url)


@pytest.fixture(scope="module")
def rotation_lambda(emulator: Any) -> str:
    return ensure_rotation_lambda(emulator)


@pytest.mark.parametrize("operation", sorted(CASES))
def test_sdk_parity(operation: str, sdk: Any, emulator: Any, rotation_lambda: str) -> None:
    check_parity(sdk, operation, emulator)


def test_the_readme_setup_an_app_with_only_environment_variables(proxy: ServerThread) -> None:
    """The README's SDK set-up, in a separate process as an app would run: AWS_ENDPOINT_URL_SECRETS_MANAGER
    and placeholder keys, no code change."""
    env = clean_aws_environ()
    env.update(
        AWS_ENDPOINT_URL_SECRETS_MANAGER=proxy.url,
        AWS_ACCESS_KEY_ID="placeholder",
        AWS_SECRET_ACCESS_KEY="placeholder",
        AWS_DEFAULT_REGION=REGION,  # botocore reads this one; other SDKs read AWS_REGION
    )
    app = (
        "import botocore.session\n"
        "client = botocore.session.get_session().create_client('secretsmanager')\n"
        f"print(client.get_secret_value(SecretId={DEMO_SECRET!r})['SecretString'])\n"
    )
    out = subprocess.run([sys.executable, "-c", app], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == DEMO_SECRET_VALUE


def test_the_json_answer_is_relayed_unchanged(proxy: ServerThread, emulator: Any) -> None:
    body = json.dumps({"SecretId": DEMO_SECRET}).encode()
    headers = {"Content-Type": JSON_TYPE, "X-Amz-Target": "secretsmanager.GetSecretValue"}
    via_proxy = raw_request(proxy.port, "POST", "/", body, headers=headers)
    straight = emulator.direct().get_secret_value(SecretId=DEMO_SECRET)
    assert via_proxy.status == 200
    doc = json.loads(via_proxy.body)
    assert doc["SecretString"] == DEMO_SECRET_VALUE
    assert doc["VersionId"] == straight["VersionId"]
    assert isinstance(doc["CreatedDate"], (int, float))  # epoch seconds as the upstream wrote them, not XML
    assert via_proxy.header("x-amzn-RequestId")


def test_the_apps_own_signature_and_token_are_never_forwarded(proxy: ServerThread) -> None:
    """moto checks the proxy's signature: a forwarded app Authorization or token would be rejected."""
    body = json.dumps({"SecretId": DEMO_SECRET}).encode()
    headers = {
        "Content-Type": JSON_TYPE,
        "X-Amz-Target": "secretsmanager.GetSecretValue",
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDAPP/20200101/us-east-1/secretsmanager/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        "X-Amz-Date": "20200101T000000Z",
        "X-Amz-Security-Token": "app-token",
        "X-Amz-Content-Sha256": "0" * 64,
    }
    r = raw_request(proxy.port, "POST", "/", body, headers=headers)
    assert r.status == 200, r.body
    assert json.loads(r.body)["SecretString"] == DEMO_SECRET_VALUE
    # and with an SDK that sends a session token of its own
    assert (
        sdk_client(proxy.url, token="app-session-token").get_secret_value(SecretId=DEMO_SECRET)["Name"] == DEMO_SECRET
    )


def test_upstream_errors_reach_the_sdk_as_a_direct_call_sees_them(sdk: Any, emulator: Any) -> None:
    missing = f"sdk/missing-{uuid.uuid4().hex}"
    with pytest.raises(ClientError) as via_proxy:
        sdk.get_secret_value(SecretId=missing)
    with pytest.raises(ClientError) as straight:
        emulator.direct().get_secret_value(SecretId=missing)
    assert via_proxy.value.response["Error"] == straight.value.response["Error"]
    assert via_proxy.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_policy_applies_to_sdk_calls_and_denials_are_json(start_proxy: Any, emulator: Any) -> None:
    proxy = start_proxy(policy={"allow_actions": ["GetSecretValue", "DescribeSecret"], "allow_secrets": ["demo/*"]})
    sdk = sdk_client(proxy.url)
    assert sdk.get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == DEMO_SECRET_VALUE
    other = f"sdk/other-{uuid.uuid4().hex[:8]}"
    emulator.direct().create_secret(Name=other, SecretString="not for this app")
    arn = emulator.direct().describe_secret(SecretId=DEMO_SECRET)["ARN"]
    assert sdk.describe_secret(SecretId=arn)["Name"] == DEMO_SECRET  # an ARN is matched by the name inside
    for call in (
        lambda: sdk.get_secret_value(SecretId=other),
        lambda: sdk.batch_get_secret_value(SecretIdList=[DEMO_SECRET, other]),
        lambda: sdk.list_secrets(),
        lambda: sdk.put_secret_value(SecretId=DEMO_SECRET, SecretString="overwrite"),
    ):
        with pytest.raises(ClientError) as denied:
            call()
        assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
        assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert emulator.direct().get_secret_value(SecretId=DEMO_SECRET)["SecretString"] == DEMO_SECRET_VALUE


@pytest.mark.parametrize(
    ("target", "body", "status", "code"),
    [
        ("secretsmanager.GetSecretValue", b'{"SecretId": ', 400, "SerializationException"),
        ("secretsmanager.GetSecretValue", b'{"SecretId": "a", "SecretId": "b"}', 400, "SerializationException"),
        ("secretsmanager.GetSecretValue", b'{"SecretId": "a", "Bogus": 1}', 400, "InvalidParameterException"),
        ("secretsmanager.GetSecretValue", b"{}", 400, "InvalidParameterException"),
        ("secretsmanager.GetSecretValue", b'{"SecretId": 7}', 400, "InvalidParameterException"),
        ("secretsmanager.GetRandomPassword", b'{"PasswordLength": 0}', 400, "InvalidParameterException"),
        ("secretsmanager.NoSuchOperation", b"{}", 400, "UnknownOperationException"),
        ("kms.GetSecretValue", b"{}", 400, "UnknownOperationException"),
        ("secretsmanager.GetSecretValue", b"[" * 100000, 400, "SerializationException"),
    ],
)
def test_bad_sdk_calls_get_json_errors(proxy: ServerThread, target: str, body: bytes, status: int, code: str) -> None:
    r = raw_request(proxy.port, "POST", "/", body, headers={"Content-Type": JSON_TYPE, "X-Amz-Target": target})
    assert r.status == status, r.body
    assert r.header("Content-Type") == JSON_TYPE
    doc = json.loads(r.body)
    assert doc["__type"] == code and doc["message"]
    assert r.header("x-amzn-RequestId")


def test_rules_still_apply_and_answer_in_json(proxy: ServerThread) -> None:
    headers = {"Content-Type": JSON_TYPE, "X-Amz-Target": "secretsmanager.GetSecretValue", "Host": "evil.example"}
    r = raw_request(proxy.port, "POST", "/", b"{}", headers=headers)
    assert r.status == 400 and json.loads(r.body)["__type"] == "AccessDeniedException"
    r = raw_request(
        proxy.port,
        "POST",
        "/",
        b'{"SecretId": "' + b"a" * 300000 + b'"}',
        headers={"Content-Type": JSON_TYPE, "X-Amz-Target": "secretsmanager.GetSecretValue"},
    )
    assert r.status == 413 and json.loads(r.body)["__type"] == "RequestEntityTooLarge"
    # a Query request on the same listener still gets XML
    r = raw_request(proxy.port, "GET", "/?Action=Nope&Version=2017-10-17")
    assert r.status == 400 and r.header("Content-Type") == "text/xml" and b"<Code>InvalidAction</Code>" in r.body
