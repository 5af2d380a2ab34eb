"""Parity: every Secrets Manager operation moto implements, through the proxy with the legacy (awsQuery,
unsigned) client and directly with a signed JSON 1.1 client, gives the same parsed result.

Reads run on the same secret both ways and must be equal. Writes change state, so each side runs on its own
twin secret (created identically) and the results must be equal once the twin's name, ARN and the
per-call identifiers are set aside.

Operations moto does not implement are not covered here (see SKIPPED).
"""

from __future__ import annotations

import datetime
import io
import re
import uuid
import zipfile
from collections.abc import Callable
from typing import Any

import pytest

from proxy.local import ACCOUNT_ID, policy_document

# Operations of botocore's secretsmanager model that moto's server does not implement.
SKIPPED = {
    "AssociateCrossAccountReplica": "not implemented by moto",
    "DisassociateCrossAccountReplica": "not implemented by moto",
    "ListResourcePolicies": "not implemented by moto",
    "StopReplicationToReplica": "not implemented by moto",
    "ValidateResourcePolicy": "not implemented by moto",
}

POLICY = policy_document(
    {
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"},
        "Action": "secretsmanager:*",
        "Resource": "*",
    }
)

ROTATION_LAMBDA = f"arn:aws:lambda:us-east-1:{ACCOUNT_ID}:function:parity-rotate"

Params = Callable[[str], dict[str, Any]]

# operation -> (kind, params from the secret's name). "read": same secret both ways; "write": twin secrets.
CASES: dict[str, tuple[str, Params]] = {
    "GetSecretValue": ("read", lambda n: {"SecretId": n}),
    "DescribeSecret": ("read", lambda n: {"SecretId": n}),
    "ListSecretVersionIds": ("read", lambda n: {"SecretId": n, "IncludeDeprecated": True}),
    "BatchGetSecretValue": ("read", lambda n: {"SecretIdList": [n]}),
    "ListSecrets": ("read", lambda n: {"Filters": [{"Key": "name", "Values": [n]}], "IncludePlannedDeletion": False}),
    "GetResourcePolicy": ("read", lambda n: {"SecretId": n}),
    "GetRandomPassword": ("random", lambda n: {"PasswordLength": 24, "ExcludePunctuation": True}),
    "CreateSecret": (
        "create",
        lambda n: {"Name": n, "SecretString": "v1", "Description": "d", "Tags": [{"Key": "team", "Value": "a"}]},
    ),
    "PutSecretValue": (
        "write",
        lambda n: {"SecretId": n, "SecretBinary": bytes(range(256)), "VersionStages": ["AWSCURRENT"]},
    ),
    "UpdateSecret": ("write", lambda n: {"SecretId": n, "Description": "new", "SecretString": "v2"}),
    "TagResource": ("write", lambda n: {"SecretId": n, "Tags": [{"Key": "k", "Value": "v"}]}),
    "UntagResource": ("write", lambda n: {"SecretId": n, "TagKeys": ["team"]}),
    "PutResourcePolicy": ("write", lambda n: {"SecretId": n, "ResourcePolicy": POLICY, "BlockPublicPolicy": True}),
    "DeleteResourcePolicy": ("write", lambda n: {"SecretId": n}),
    "RotateSecret": (
        "write",
        lambda n: {
            "SecretId": n,
            "RotationLambdaARN": ROTATION_LAMBDA,
            "RotationRules": {"AutomaticallyAfterDays": 30},
            "RotateImmediately": False,
        },
    ),
    "CancelRotateSecret": ("rotating", lambda n: {"SecretId": n}),
    "UpdateSecretVersionStage": ("stage", lambda n: {"SecretId": n, "VersionStage": "CUSTOM"}),
    "DeleteSecret": ("write", lambda n: {"SecretId": n, "RecoveryWindowInDays": 7}),
    "RestoreSecret": ("restore", lambda n: {"SecretId": n}),
    "ReplicateSecretToRegions": ("write", lambda n: {"SecretId": n, "AddReplicaRegions": [{"Region": "eu-west-1"}]}),
    "RemoveRegionsFromReplication": ("replicated", lambda n: {"SecretId": n, "RemoveReplicaRegions": ["eu-west-1"]}),
}

VOLATILE = {
    "ARN",
    "Name",
    "VersionId",
    "ResponseMetadata",
    "CreatedDate",
    "LastChangedDate",
    "LastAccessedDate",
    "DeletionDate",
    "DeletedDate",
    "NextRotationDate",
    "LastRotatedDate",
}
# moto answers ListSecretVersionIds with CreatedDate and LastAccessedDate set to the time of the call
# (moto/secretsmanager/models.py, list_secret_version_ids): two calls either side of a second boundary differ
# there, so those are compared within a few seconds instead of exactly.
CLOCK_READS = {"ListSecretVersionIds": ("CreatedDate", "LastAccessedDate")}
CLOCK_SLACK_SECONDS = 5
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def call(client: Any, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = getattr(client, snake(operation))(**params)
    result.pop("ResponseMetadata", None)
    return result


def normalise(value: Any, name: str) -> Any:
    """Set aside what differs between twin secrets: their names, ARNs, version ids and times."""
    if isinstance(value, dict):
        return {normalise(k, name): normalise(v, name) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normalise(v, name) for v in value]
    if isinstance(value, str):
        return UUID.sub("<uuid>", value.replace(name, "<twin>"))
    return value


def set_clock_aside(value: Any, keys: tuple[str, ...], found: list[Any]) -> Any:
    """``value`` without ``keys`` (at any depth); what they held is appended to ``found`` in document order."""
    if isinstance(value, dict):
        found.extend(value[k] for k in keys if k in value)
        return {k: set_clock_aside(v, keys, found) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [set_clock_aside(v, keys, found) for v in value]
    return value


def assert_same_read(operation: str, via_proxy: dict[str, Any], straight: dict[str, Any]) -> None:
    keys = CLOCK_READS.get(operation, ())
    times_proxy: list[Any] = []
    times_direct: list[Any] = []
    assert set_clock_aside(via_proxy, keys, times_proxy) == set_clock_aside(straight, keys, times_direct)
    assert len(times_proxy) == len(times_direct)
    for a, b in zip(times_proxy, times_direct, strict=True):
        assert isinstance(a, datetime.datetime) and isinstance(b, datetime.datetime), (a, b)
        assert abs((a - b).total_seconds()) <= CLOCK_SLACK_SECONDS, (a, b)


def make_secret(direct: Any, kind: str, name: str) -> None:
    direct.create_secret(
        Name=name, SecretString="v0", Tags=[{"Key": "team", "Value": "a"}], ClientRequestToken="a" * 36
    )
    if kind == "restore":
        direct.delete_secret(SecretId=name, RecoveryWindowInDays=7)
    if kind == "replicated":
        direct.replicate_secret_to_regions(SecretId=name, AddReplicaRegions=[{"Region": "eu-west-1"}])
    if kind == "read":
        direct.put_resource_policy(SecretId=name, ResourcePolicy=POLICY)
    if kind == "rotating":
        direct.rotate_secret(
            SecretId=name,
            RotationLambdaARN=ROTATION_LAMBDA,
            RotationRules={"AutomaticallyAfterDays": 30},
            RotateImmediately=False,
        )


@pytest.fixture(scope="module")
def rotation_lambda(emulator: Any) -> str:
    """A Lambda function for RotateSecret to name (moto checks it exists; it is never invoked)."""
    return ensure_rotation_lambda(emulator)


def ensure_rotation_lambda(emulator: Any) -> str:
    """Create the rotation Lambda once per emulator (other modules reuse it)."""
    iam, lam = emulator.direct("iam"), emulator.direct("lambda")
    try:
        iam.get_role(RoleName="parity-rotation")
        return ROTATION_LAMBDA  # made by an earlier module (moto's Lambda GET fails signature checks)
    except iam.exceptions.NoSuchEntityException:
        pass
    role = iam.create_role(
        RoleName="parity-rotation",
        AssumeRolePolicyDocument=policy_document(
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ),
    )["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as zf:
        zf.writestr("index.py", "def handler(event, context):\n    return None\n")
    arn: str = lam.create_function(
        FunctionName="parity-rotate",
        Runtime="python3.12",
        Role=role,
        Handler="index.handler",
        Code={"ZipFile": code.getvalue()},
    )["FunctionArn"]
    assert arn == ROTATION_LAMBDA
    return arn


def stage_params(direct: Any, name: str, params: dict[str, Any]) -> dict[str, Any]:
    version = direct.describe_secret(SecretId=name)["VersionIdsToStages"]
    return {**params, "MoveToVersionId": next(iter(version))}


def test_every_operation_is_covered_or_skipped_with_a_reason(emulator: Any) -> None:
    from botocore.session import get_session

    model_ops = set(get_session().get_service_model("secretsmanager").operation_names)
    assert set(CASES) | set(SKIPPED) == model_ops


@pytest.mark.parametrize("operation", sorted(CASES))
def test_parity(operation: str, legacy: Any, emulator: Any, rotation_lambda: str) -> None:
    check_parity(legacy, operation, emulator)


def check_parity(client: Any, operation: str, emulator: Any) -> None:
    """``operation`` through the proxy with ``client`` and straight to the emulator give the same result."""
    kind, make_params = CASES[operation]
    direct = emulator.direct()
    tag = uuid.uuid4().hex[:8]
    if kind == "read":
        name = f"parity/{operation}/{tag}"
        make_secret(direct, kind, name)
        assert_same_read(
            operation, call(client, operation, make_params(name)), call(direct, operation, make_params(name))
        )
        return
    if kind == "random":
        via_proxy, straight = call(client, operation, make_params("")), call(direct, operation, make_params(""))
        assert set(via_proxy) == set(straight) == {"RandomPassword"}
        assert len(via_proxy["RandomPassword"]) == len(straight["RandomPassword"]) == 24
        return
    twin_proxy, twin_direct = f"parity/{operation}/{tag}-p", f"parity/{operation}/{tag}-d"
    if kind != "create":
        make_secret(direct, kind, twin_proxy)
        make_secret(direct, kind, twin_direct)
    params_proxy, params_direct = make_params(twin_proxy), make_params(twin_direct)
    if kind == "stage":
        params_proxy, params_direct = (
            stage_params(direct, twin_proxy, params_proxy),
            stage_params(direct, twin_direct, params_direct),
        )
    via_proxy = call(client, operation, params_proxy)
    straight = call(direct, operation, params_direct)
    assert set(via_proxy) == set(straight)
    assert normalise(via_proxy, twin_proxy) == normalise(straight, twin_direct)
    # and the state the write left behind is the same
    assert normalise(call(direct, "DescribeSecret", {"SecretId": twin_proxy}), twin_proxy) == normalise(
        call(direct, "DescribeSecret", {"SecretId": twin_direct}), twin_direct
    )


def test_errors_parse_the_same_way(legacy: Any, emulator: Any) -> None:
    """An upstream error reaches the legacy client as the same ClientError code a JSON client sees."""
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as via_proxy:
        legacy.get_secret_value(SecretId=f"parity/missing-{uuid.uuid4().hex}")
    with pytest.raises(ClientError) as straight:
        emulator.direct().get_secret_value(SecretId=f"parity/missing-{uuid.uuid4().hex}")
    assert (
        via_proxy.value.response["Error"]["Code"]
        == straight.value.response["Error"]["Code"]
        == "ResourceNotFoundException"
    )
    assert via_proxy.value.response["Error"]["Message"] == straight.value.response["Error"]["Message"]
    assert (
        via_proxy.value.response["ResponseMetadata"]["HTTPStatusCode"]
        == straight.value.response["ResponseMetadata"]["HTTPStatusCode"]
    )
