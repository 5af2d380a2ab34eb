"""The two error tables (docs/interface.md, "Errors"): validation errors in the service's own code and words on
both paths, and what an SDK caller gets for each of the proxy's own errors."""

from __future__ import annotations

import botocore.session
import pytest
from botocore.retries import standard

from proxy import errors
from proxy.sdk import decode_sdk_call
from proxy.translate import Translator, validation_code

SESSION = botocore.session.get_session()
SM = Translator(SESSION.get_service_model("secretsmanager"))


@pytest.mark.parametrize(
    "service,code",
    [
        ("secretsmanager", "InvalidParameterException"),  # the model's own error shape
        ("sns", "InvalidParameter"),  # the wire code of SNS's InvalidParameterException shape
        ("ecr", "InvalidParameterException"),
        ("ssm", "ValidationException"),  # no InvalidParameterException shape: its ValidationException
        ("sts", "ValidationError"),  # awsQuery without either shape
        ("kms", "ValidationException"),  # JSON without either shape
    ],
)
def test_the_validation_code_comes_from_the_model(service: str, code: str) -> None:
    assert validation_code(SESSION.get_service_model(service)) == code


# moto's own tests assert these two messages (tests/test_secretsmanager, "..._too_short", "..._validation")
@pytest.mark.parametrize(
    "action,params,message",
    [
        (
            "RotateSecret",
            [("SecretId", "s"), ("ClientRequestToken", "TOO-SHORT")],
            "ClientRequestToken must be 32-64 characters long.",
        ),
        (
            "RotateSecret",
            [("SecretId", "s"), ("RotationRules.AutomaticallyAfterDays", "0")],
            "RotationRules.AutomaticallyAfterDays must be within 1-1000.",
        ),
        (
            "RotateSecret",
            [("SecretId", "s"), ("RotationRules.AutomaticallyAfterDays", "1001")],
            "RotationRules.AutomaticallyAfterDays must be within 1-1000.",
        ),
        ("GetRandomPassword", [("PasswordLength", "5555")], "PasswordLength must be within 1-4096."),
        ("BatchGetSecretValue", [("SecretIdList", "")], "SecretIdList must have 1-20 items."),
        ("GetSecretValue", [], "SecretId is required"),
        ("ListSecrets", [("MaxResults", "ten")], "MaxResults: must be an integer, got 'ten'"),
    ],
)
def test_query_validation_errors_are_the_services(action: str, params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(errors.ValidationError) as info:
        SM.decode(action, "2017-10-17", params)
    assert (info.value.status, info.value.code, info.value.message) == (400, "InvalidParameterException", message)
    assert info.value.sdk_answer() == (400, "InvalidParameterException")


@pytest.mark.parametrize(
    "body,message",
    [
        (b'{"SecretId": "s", "ClientRequestToken": "TOO-SHORT"}', "ClientRequestToken must be 32-64 characters long."),
        (
            b'{"SecretId": "s", "RotationRules": {"AutomaticallyAfterDays": 0}}',
            "RotationRules.AutomaticallyAfterDays must be within 1-1000.",
        ),
        (b'{"SecretId": "s", "Bogus": 1}', "Bogus is not a member of RotateSecretRequest"),
        (b'{"SecretId": 7}', "SecretId: must be a string"),
        (b"{}", "SecretId is required"),
    ],
)
def test_sdk_validation_errors_are_the_services(body: bytes, message: str) -> None:
    op = SM.operation_model("RotateSecret", None)
    with pytest.raises(errors.ValidationError) as info:
        decode_sdk_call(SM, op, body)
    assert (info.value.code, info.value.message) == ("InvalidParameterException", message)


@pytest.mark.parametrize(
    "params,error",
    [
        ([("SecretIdList.member.2", "a")], errors.InvalidParameterValue),  # an index gap
        ([("SecretIdList.member.1", "a"), ("SecretIdList.member.1", "b")], errors.InvalidParameterValue),
        ([("SecretIdList.member.1", "a"), ("Bogus", "1")], errors.UnknownParameter),
    ],
)
def test_query_wire_form_errors_keep_the_query_table(params: list[tuple[str, str]], error: type[Exception]) -> None:
    with pytest.raises(error):
        SM.decode("BatchGetSecretValue", None, params)


def test_an_sns_validation_error_is_snss_own() -> None:
    sns = Translator(SESSION.get_service_model("sns"))
    with pytest.raises(errors.ValidationError) as info:
        sns.decode("GetTopicAttributes", "2010-03-31", [])
    assert info.value.code == "InvalidParameter"


# (error, the SDK caller's status and code)
SDK_TABLE = [
    (errors.AccessDenied("denied"), 400, "AccessDeniedException"),
    (errors.ValidationError("bad"), 400, "InvalidParameterException"),
    (errors.RegionNotServed("other region"), 400, "InvalidRequestException"),
    (errors.InvalidAction("no such operation"), 400, "UnknownOperationException"),
    (errors.MalformedJSON("not json"), 400, "SerializationException"),
    (errors.RequestEntityTooLarge("too big"), 413, "RequestEntityTooLarge"),
    (errors.ServiceUnavailable("over the cap"), 503, "ThrottlingException"),
    (errors.CredentialsUnavailable("none"), 503, "CredentialsUnavailable"),
    (errors.BadGateway("reset"), 502, "BadGateway"),
    (errors.ResponseTooLarge("big"), 502, "ResponseTooLarge"),
    (errors.GatewayTimeout("slow"), 504, "RequestTimeoutException"),
    (errors.UpstreamError(404, "ResourceNotFoundException", "gone"), 404, "ResourceNotFoundException"),
]


@pytest.mark.parametrize("error,status,code", SDK_TABLE, ids=[type(e).__name__ for e, _, _ in SDK_TABLE])
def test_the_sdk_table(error: errors.ProxyError, status: int, code: str) -> None:
    assert error.sdk_answer() == (status, code)


def test_every_5xx_stays_a_5xx_that_botocore_retries() -> None:
    """botocore's standard retry mode is the oracle: the status is transient, and where the proxy chose a code
    it is one of the codes botocore itself retries on."""
    retried_codes = set(standard.TransientRetryableChecker._TRANSIENT_ERROR_CODES) | set(
        standard.ThrottledRetryableChecker._THROTTLED_ERROR_CODES
    )
    for cls in _all_subclasses(errors.ServerError):
        status, code = cls("x").sdk_answer()
        assert status in standard.TransientRetryableChecker._TRANSIENT_STATUS_CODES, cls
        if cls.sdk_code is not None:
            assert code in retried_codes, cls
    assert errors.ServiceUnavailable("x").sdk_answer()[1] in standard.ThrottledRetryableChecker._THROTTLED_ERROR_CODES


def _all_subclasses(cls: type[errors.ProxyError]) -> list[type[errors.ProxyError]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out
