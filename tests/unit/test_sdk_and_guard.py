"""Units of the SDK path (JSON body -> typed input, driven by botocore's model) and of the credential guard."""

from __future__ import annotations

import datetime
from typing import Any

import botocore.session
import pytest
from botocore.serialize import JSONSerializer

from proxy import errors
from proxy.guard import CredentialGuard, credential_operations
from proxy.models import Operation
from proxy.sdk import DEFAULT_LIMITS, decode_json_input, load_json, sdk_operation
from proxy.translate import InputLimits, Translator

SESSION = botocore.session.get_session()
SM = SESSION.get_service_model("secretsmanager")
TRANSLATOR = Translator(SM)


def decode(op: str, doc: Any, limits: InputLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    return decode_json_input(doc, SM.operation_model(op), limits)


def test_what_botocore_serializes_decodes_back_to_the_same_input() -> None:
    """Round trip through botocore's own JSONSerializer: every type the model uses for Secrets Manager."""
    cases = {
        "PutSecretValue": {
            "SecretId": "a",
            "SecretBinary": b"\x00\xff",
            "VersionStages": ["X"],
            "ClientRequestToken": "t" * 32,
        },
        "ListSecrets": {
            "Filters": [{"Key": "name", "Values": ["a", "b"]}],
            "MaxResults": 5,
            "IncludePlannedDeletion": True,
        },
        "CreateSecret": {
            "Name": "n",
            "Tags": [{"Key": "k", "Value": "v"}],
            "ForceOverwriteReplicaSecret": False,
            "ClientRequestToken": "t" * 32,
        },
        "RotateSecret": {
            "SecretId": "a",
            "RotationRules": {"AutomaticallyAfterDays": 3},
            "ClientRequestToken": "t" * 32,
        },
    }
    for op, params in cases.items():
        body = JSONSerializer().serialize_to_request(params, SM.operation_model(op))["body"]
        assert decode(op, load_json(body)) == params, op


def test_idempotency_tokens_are_filled_and_types_checked() -> None:
    assert len(decode("CreateSecret", {"Name": "n"})["ClientRequestToken"]) == 36
    with pytest.raises(errors.ValidationError, match="SecretId: must be a string"):
        decode("GetSecretValue", {"SecretId": 1})
    with pytest.raises(errors.ValidationError, match="must be true or false"):
        decode("ListSecrets", {"IncludePlannedDeletion": "true"})
    with pytest.raises(errors.ValidationError, match="must be an integer"):
        decode("ListSecrets", {"MaxResults": True})
    with pytest.raises(errors.ValidationError, match=r"Filters\[0\].Values: must be a JSON array"):
        decode("ListSecrets", {"Filters": [{"Key": "name", "Values": "a"}]})
    with pytest.raises(errors.ValidationError, match=r"Filters\[0\].Nope"):
        decode("ListSecrets", {"Filters": [{"Nope": 1}]})
    with pytest.raises(errors.ValidationError, match="base64"):
        decode("PutSecretValue", {"SecretId": "a", "SecretBinary": "not base64!"})
    with pytest.raises(errors.ValidationError, match="max_list_members"):
        decode("BatchGetSecretValue", {"SecretIdList": ["a"] * 3}, InputLimits(max_list_members=2))
    with pytest.raises(errors.ValidationError, match="max_parameters"):
        decode("BatchGetSecretValue", {"SecretIdList": ["a"] * 3}, InputLimits(max_parameters=2))
    assert decode("GetSecretValue", {"SecretId": "a", "VersionId": None}) == {"SecretId": "a"}


def test_timestamps_are_epoch_seconds_or_iso() -> None:
    trail = SESSION.get_service_model("cloudtrail")  # a JSON 1.1 model with timestamp inputs
    op = trail.operation_model("LookupEvents")
    stamp = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert decode_json_input({"StartTime": 1704164645}, op)["StartTime"] == stamp
    assert decode_json_input({"StartTime": "2024-01-02T03:04:05Z"}, op)["StartTime"] == stamp
    with pytest.raises(errors.ValidationError, match="epoch seconds or an ISO 8601"):
        decode_json_input({"StartTime": "yesterday"}, op)


@pytest.mark.parametrize("body", [b"{", b'{"a": 1, "a": 2}', b"\xff", b"[" * 50000])
def test_bodies_that_are_not_json(body: bytes) -> None:
    with pytest.raises(errors.MalformedJSON):
        load_json(body)


def test_the_target_and_content_type_come_from_the_model() -> None:
    assert (
        sdk_operation(TRANSLATOR, "secretsmanager.GetSecretValue", "application/x-amz-json-1.1").name
        == "GetSecretValue"
    )
    with pytest.raises(errors.InvalidAction):
        sdk_operation(TRANSLATOR, "GetSecretValue", "application/x-amz-json-1.1")
    with pytest.raises(errors.InvalidAction):
        sdk_operation(TRANSLATOR, "secretsmanager.Nope", "application/x-amz-json-1.1")
    with pytest.raises(errors.UnsupportedMediaType):
        sdk_operation(TRANSLATOR, "secretsmanager.GetSecretValue", "application/x-amz-json-1.0")


def test_credential_operations_come_from_the_model_and_the_table() -> None:
    sts = credential_operations(SESSION.get_service_model("sts"))
    assert {
        "AssumeRole",
        "AssumeRoleWithSAML",
        "AssumeRoleWithWebIdentity",
        "GetSessionToken",
        "GetFederationToken",
    } <= sts
    assert "GetCallerIdentity" not in sts and "GetAccessKeyInfo" not in sts
    iam = credential_operations(SESSION.get_service_model("iam"))
    assert {"CreateAccessKey", "CreateServiceSpecificCredential", "ResetServiceSpecificCredential"} <= iam
    assert "ListAccessKeys" not in iam
    assert credential_operations(SM) == frozenset()
    sns = credential_operations(SESSION.get_service_model("sns"))
    assert "ListTopics" not in sns and "Publish" not in sns
    assert "ListSMSSandboxPhoneNumbers" in sns  # phone numbers the model marks sensitive: refused, the safe side
    assert "GetCredentialsForIdentity" in credential_operations(SESSION.get_service_model("cognito-identity"))


def op(name: str) -> Operation:
    return Operation(name=name, input={}, secret_ids=(), is_read=True, retryable=True)


@pytest.mark.parametrize(
    ("allow", "allowed"),
    [(None, False), (["*"], False), (["Get*"], False), (["GetSessionToken"], True), (["AssumeRole"], False)],
)
def test_only_an_exact_name_enables_a_credential_operation(allow: list[str] | None, allowed: bool) -> None:
    guard = CredentialGuard.compile(SESSION.get_service_model("sts"), allow)
    guard.check(op("GetCallerIdentity"))
    if allowed:
        guard.check(op("GetSessionToken"))
    else:
        with pytest.raises(errors.AccessDenied, match="hands out credentials"):
            guard.check(op("GetSessionToken"))
