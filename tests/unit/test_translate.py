"""translate.py: awsQuery -> typed input, JSON answers -> Query XML that botocore's QueryParser reads."""

from __future__ import annotations

import datetime
import json
from typing import Any

import botocore.session
import pytest
from botocore.model import ServiceModel
from botocore.parsers import QueryParser
from botocore.serialize import QuerySerializer

from proxy import errors
from proxy.models import UpstreamResponse
from proxy.shapes import iso8601, xml_text
from proxy.translate import InputLimits, Translator, decode_input, upstream_error, utc_timestamp
from tests.support import query_model

SESSION = botocore.session.get_session()
JSON_MODEL = SESSION.get_service_model("secretsmanager")
QUERY_MODEL = ServiceModel(query_model("secretsmanager"), "secretsmanager")
T = Translator(JSON_MODEL)


def query_params(operation: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """What botocore's QuerySerializer (the legacy client) would send, as decoded pairs."""
    body = QuerySerializer().serialize_to_request(params, QUERY_MODEL.operation_model(operation))["body"]
    return [(k, str(v)) for k, v in body.items() if k not in ("Action", "Version")]


@pytest.mark.parametrize(
    "operation,params",
    [
        ("GetSecretValue", {"SecretId": "app/db", "VersionStage": "AWSCURRENT"}),
        ("BatchGetSecretValue", {"SecretIdList": ["a", "b", "c"]}),
        ("ListSecrets", {"Filters": [{"Key": "name", "Values": ["x", "y"]}, {"Key": "all", "Values": ["z"]}]}),
        ("ListSecrets", {"IncludePlannedDeletion": True, "MaxResults": 7, "SortOrder": "asc"}),
        ("CreateSecret", {"Name": "n", "SecretBinary": bytes(range(256)), "ClientRequestToken": "t" * 32}),
        ("CreateSecret", {"Name": "n", "Tags": [{"Key": "k", "Value": "v"}], "ClientRequestToken": "x" * 32}),
        (
            "RotateSecret",
            {"SecretId": "s", "RotationRules": {"AutomaticallyAfterDays": 3}, "ClientRequestToken": "y" * 32},
        ),
        ("DeleteSecret", {"SecretId": "s", "ForceDeleteWithoutRecovery": False}),
        ("UpdateSecretVersionStage", {"SecretId": "s", "VersionStage": "AWSPREVIOUS", "MoveToVersionId": "v" * 32}),
    ],
)
def test_decode_is_the_inverse_of_botocores_query_serializer(operation: str, params: dict[str, Any]) -> None:
    op = JSON_MODEL.operation_model(operation)
    assert decode_input(query_params(operation, params), op) == params


def test_maps_decode_from_entries() -> None:
    # secretsmanager has no map in its inputs: use a synthetic model with one
    model = ServiceModel(
        {
            "metadata": {"protocol": "json", "apiVersion": "1", "endpointPrefix": "x", "jsonVersion": "1.1"},
            "operations": {
                "Op": {"name": "Op", "http": {"method": "POST", "requestUri": "/"}, "input": {"shape": "In"}}
            },
            "shapes": {
                "In": {"type": "structure", "members": {"Attrs": {"shape": "M"}, "Count": {"shape": "I"}}},
                "M": {"type": "map", "key": {"shape": "S"}, "value": {"shape": "S"}},
                "S": {"type": "string"},
                "I": {"type": "integer", "min": 1, "max": 5},
            },
        }
    )
    op = model.operation_model("Op")
    pairs = [
        ("Attrs.entry.1.key", "a"),
        ("Attrs.entry.1.value", "1"),
        ("Attrs.entry.2.key", "b"),
        ("Attrs.entry.2.value", ""),
    ]
    assert decode_input(pairs, op) == {"Attrs": {"a": "1", "b": ""}}
    with pytest.raises(errors.MissingParameter, match=r"Attrs.entry.1.value"):
        decode_input([("Attrs.entry.1.key", "a")], op)
    with pytest.raises(errors.ValidationError, match=r"^Count must be within 1-5\.$"):
        decode_input([("Count", "6")], op)
    with pytest.raises(errors.ValidationError, match="integer"):
        decode_input([("Count", "1.5")], op)


def test_missing_idempotency_token_gets_a_uuid() -> None:
    op = JSON_MODEL.operation_model("PutSecretValue")
    first = decode_input([("SecretId", "s"), ("SecretString", "v")], op)["ClientRequestToken"]
    second = decode_input([("SecretId", "s"), ("SecretString", "v")], op)["ClientRequestToken"]
    assert len(first) == 36 and first != second
    given = decode_input([("SecretId", "s"), ("ClientRequestToken", "c" * 32)], op)
    assert given["ClientRequestToken"] == "c" * 32


@pytest.mark.parametrize(
    "pairs,error,fragment",
    [
        ([("SecretId", "s"), ("Bogus", "1")], errors.UnknownParameter, "Bogus"),
        ([], errors.ValidationError, "SecretId is required"),
        ([("SecretId", "")], errors.ValidationError, r"^SecretId must be 1-2048 characters long\.$"),
        ([("SecretId", "s"), ("SecretId.x", "1")], errors.UnknownParameter, "SecretId.x"),
        ([("SecretId", "s"), ("VersionStage..x", "1")], errors.UnknownParameter, "empty part"),
        ([("SecretId", "s"), ("SecretId", "t")], errors.InvalidParameterValue, "more than once"),
    ],
)
def test_get_secret_value_input_errors(pairs: list[tuple[str, str]], error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        decode_input(pairs, JSON_MODEL.operation_model("GetSecretValue"))


def test_list_index_gaps_and_limits() -> None:
    op = JSON_MODEL.operation_model("BatchGetSecretValue")
    with pytest.raises(errors.InvalidParameterValue, match="index 2 is missing"):
        decode_input([("SecretIdList.member.1", "a"), ("SecretIdList.member.3", "c")], op)
    with pytest.raises(errors.InvalidParameterValue, match="indices"):
        decode_input([("SecretIdList.member.0", "a")], op)
    with pytest.raises(errors.InvalidParameterValue, match="indices"):
        decode_input([("SecretIdList.member.01", "a")], op)
    with pytest.raises(errors.UnknownParameter, match="SecretIdList.item"):
        decode_input([("SecretIdList.item.1", "a")], op)
    with pytest.raises(errors.InvalidParameterValue, match="max_list_members"):
        decode_input([("SecretIdList.member.3", "a")], op, InputLimits(max_list_members=2))
    with pytest.raises(errors.InvalidParameterValue, match="max_parameters"):
        decode_input(
            [("SecretIdList.member.1", "a"), ("SecretIdList.member.2", "b")], op, InputLimits(max_parameters=1)
        )
    with pytest.raises(errors.ValidationError, match=r"^SecretIdList must have 1-20 items\.$"):
        decode_input([("SecretIdList", "")], op)  # the model's min of 1 item
    assert decode_input([("Filters", "")], JSON_MODEL.operation_model("ListSecrets")) == {"Filters": []}


@pytest.mark.parametrize(
    "member,value,fragment",
    [
        ("IncludePlannedDeletion", "yes", "true or false"),
        ("MaxResults", "ten", "integer"),
        ("MaxResults", "0", "within 1-100"),
    ],
)
def test_scalar_types(member: str, value: str, fragment: str) -> None:
    with pytest.raises(errors.ValidationError, match=fragment):
        decode_input([(member, value)], JSON_MODEL.operation_model("ListSecrets"))


def test_blob_must_be_base64() -> None:
    op = JSON_MODEL.operation_model("PutSecretValue")
    with pytest.raises(errors.ValidationError, match="base64"):
        decode_input([("SecretId", "s"), ("SecretBinary", "not base64!")], op)


def test_json_request_is_aws_json_1_1() -> None:
    operation = T.decode("PutSecretValue", "2017-10-17", [("SecretId", "s"), ("SecretBinary", "AAH/")])
    headers, body = T.json_request(operation)
    assert headers == {"X-Amz-Target": "secretsmanager.PutSecretValue", "Content-Type": "application/x-amz-json-1.1"}
    doc = json.loads(body)
    assert doc["SecretBinary"] == "AAH/" and doc["SecretId"] == "s" and len(doc["ClientRequestToken"]) == 36


@pytest.mark.parametrize(
    "action,version,error",
    [
        ("", None, errors.MissingAction),
        ("GetSecretValu", None, errors.InvalidAction),
        ("GetSecretValue", "2010-05-08", errors.NoSuchVersion),
    ],
)
def test_action_and_version(action: str, version: str | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        T.decode(action, version, [("SecretId", "s")])


def test_absent_version_means_the_models() -> None:
    assert T.decode("GetSecretValue", None, [("SecretId", "s")]).input == {"SecretId": "s"}


def parse_xml(operation: str, body: bytes) -> dict[str, Any]:
    op = QUERY_MODEL.operation_model(operation)
    return QueryParser().parse({"status_code": 200, "headers": {}, "body": body}, op.output_shape)  # type: ignore[no-any-return]


def test_rendered_result_parses_with_botocores_query_parser() -> None:
    upstream = {
        "ARN": "arn:aws:secretsmanager:us-east-1:1:secret:a-AbCdEf",
        "Name": "a",
        "VersionId": "v1",
        "SecretBinary": "AAEC/w==",
        "SecretString": "line1\r\nline2 <&> \u00e9\u6f22",
        "VersionStages": ["AWSCURRENT", "AWSPENDING"],
        "CreatedDate": 1523477145.713,
    }
    resp = UpstreamResponse(200, (), json.dumps(upstream).encode())
    body = T.render_result("GetSecretValue", resp, "req-1")
    assert body.startswith(b'<GetSecretValueResponse xmlns="https://secretsmanager.amazonaws.com/doc/2017-10-17/">')
    parsed = parse_xml("GetSecretValue", body)
    assert parsed["SecretString"] == upstream["SecretString"]
    assert parsed["SecretBinary"] == b"\x00\x01\x02\xff"
    assert parsed["VersionStages"] == ["AWSCURRENT", "AWSPENDING"]
    assert parsed["CreatedDate"] == datetime.datetime(2018, 4, 11, 20, 5, 45, 713000, tzinfo=datetime.UTC)
    assert parsed["ResponseMetadata"]["RequestId"] == "req-1"
    assert b"2018-04-11T20:05:45.713Z" in body and b"&#xD;" in body


def test_members_render_in_model_order_with_maps_and_nested_lists() -> None:
    upstream = {
        "SecretList": [
            {
                "Tags": [{"Value": "v", "Key": "k"}],
                "Name": "n",
                "SecretVersionsToStages": {"v1": ["AWSCURRENT"], "v2": []},
                "RotationEnabled": False,
                "ARN": "arn",
            }
        ],
        "NextToken": "t",
    }
    body = T.render_result("ListSecrets", UpstreamResponse(200, (), json.dumps(upstream).encode()), "r")
    text = body.decode()
    assert text.index("<ARN>") < text.index("<Name>") < text.index("<RotationEnabled>false")
    assert "<entry><key>v1</key><value><member>AWSCURRENT</member></value></entry>" in text
    parsed = parse_xml("ListSecrets", body)
    entry = parsed["SecretList"][0]
    assert entry["SecretVersionsToStages"] == {"v1": ["AWSCURRENT"], "v2": []}
    assert entry["Tags"] == [{"Key": "k", "Value": "v"}]
    assert entry["RotationEnabled"] is False
    assert parsed["NextToken"] == "t"


def test_a_control_character_is_unrepresentable() -> None:
    resp = UpstreamResponse(200, (), json.dumps({"SecretString": "a\u0001b"}).encode())
    with pytest.raises(errors.UnrepresentableValue):
        T.render_result("GetSecretValue", resp, "r")
    assert xml_text("tab\tok\n", "x") == "tab\tok\n"


def test_an_answer_that_is_not_json_is_a_bad_gateway() -> None:
    with pytest.raises(errors.BadGateway):
        T.render_result("GetSecretValue", UpstreamResponse(200, (), b"<html>"), "r")


def test_output_with_no_members_still_has_a_result_element() -> None:
    body = T.render_result("TagResource", UpstreamResponse(200, (), b"{}"), "r")
    assert body == (
        b'<TagResourceResponse xmlns="https://secretsmanager.amazonaws.com/doc/2017-10-17/">'
        b"<TagResourceResult></TagResourceResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata>"
        b"</TagResourceResponse>"
    )


@pytest.mark.parametrize(
    "status,headers,body,code,message",
    [
        (400, (), b'{"__type":"ResourceNotFoundException","message":"no"}', "ResourceNotFoundException", "no"),
        (
            400,
            (),
            b'{"__type":"com.amazon.coral#InvalidSignatureException:http://x","Message":"m"}',
            "InvalidSignatureException",
            "m",
        ),
        (
            403,
            (),
            b'<ErrorResponse xmlns="x"><Error><Code>InvalidClientTokenId</Code><Message>bad</Message></Error></ErrorResponse>',
            "InvalidClientTokenId",
            "bad",
        ),
        (503, (), b"<html><body>down</body></html>", "ServiceUnavailable", "the upstream answered HTTP 503"),
        (  # no __type in the body: X-Amzn-ErrorType names it (issue 15: metrics and errors by code)
            400,
            (("X-Amzn-ErrorType", "ResourceNotFoundException:http://internal.amazon.com/coral/com.amazon.coral/"),),
            b'{"message":"gone"}',
            "ResourceNotFoundException",
            "gone",
        ),
        (
            400,
            (("X-Amzn-ErrorType", "aws.protocols#ThrottlingException"),),
            b"",
            "ThrottlingException",
            "the upstream answered HTTP 400",
        ),
        (500, (), b"", "InternalFailure", "the upstream answered HTTP 500"),
        (502, (), b"oops", "InternalFailure", "the upstream answered HTTP 502"),
        (403, (), b"", "AccessDenied", "the upstream answered HTTP 403"),
        (
            400,
            (("x-amzn-query-error", "AWS.SimpleQueueService.NonExistentQueue;Sender"),),
            b'{"__type":"QueueDoesNotExist"}',
            "AWS.SimpleQueueService.NonExistentQueue",
            "the upstream answered HTTP 400",
        ),
    ],
)
def test_upstream_errors(
    status: int, headers: tuple[tuple[str, str], ...], body: bytes, code: str, message: str
) -> None:
    err = upstream_error(UpstreamResponse(status, headers, body))
    assert (err.status, err.code, err.message) == (status, code, message)
    assert err.fault == ("Sender" if status < 500 else "Receiver")


def test_iso8601_accepts_what_upstreams_send() -> None:
    assert iso8601(1523477145) == "2018-04-11T20:05:45.000Z"
    assert iso8601(1.523477145713e9) == "2018-04-11T20:05:45.713Z"
    assert iso8601("2018-04-11T22:05:45.713+02:00") == "2018-04-11T20:05:45.713Z"


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo", "America/Los_Angeles"])
def test_a_timestamp_without_a_zone_is_utc_whatever_the_hosts_zone(monkeypatch: pytest.MonkeyPatch, zone: str) -> None:
    """As botocore's serializers read it (``parse_to_aware_datetime``): the host's zone never shifts it."""
    import time

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        want = datetime.datetime(2018, 1, 1, tzinfo=datetime.UTC)
        assert utc_timestamp("2018-01-01T00:00:00") == want
        assert utc_timestamp("2018-01-01T09:00:00+09:00") == want
        assert utc_timestamp("1514764800") == want
    finally:
        monkeypatch.undo()
        time.tzset()
