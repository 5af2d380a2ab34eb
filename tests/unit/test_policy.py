"""proxy.policy (allow_actions, allow_secrets) and the model-driven answer filter of proxy.translate."""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest

from proxy import errors
from proxy.config import ConfigError, PolicyConfig
from proxy.policy import Policy, secret_names
from proxy.translate import Translator, visible_output

MODEL = botocore.session.get_session().get_service_model("secretsmanager")
TRANSLATOR = Translator(MODEL)
ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:{}-AbC123"


def policy(actions: list[str] | None = None, secrets: list[str] | None = None) -> Policy:
    return Policy.compile(
        PolicyConfig(
            allow_actions=tuple(actions) if actions is not None else None,
            allow_secrets=tuple(secrets) if secrets is not None else None,
        ),
        MODEL.operation_names,
    )


def op(action: str, **params: str) -> Any:
    return TRANSLATOR.decode(action, None, list(params.items()))


# --- allow_actions ---------------------------------------------------------------------------------------


def test_null_allows_exactly_the_read_operations() -> None:
    p = policy()
    allowed = {name for name in MODEL.operation_names if p.action_allowed(name)}
    assert allowed == {n for n in MODEL.operation_names if n.startswith(("Get", "Describe", "List", "BatchGet"))}
    assert {"GetSecretValue", "DescribeSecret", "ListSecrets", "BatchGetSecretValue"} <= allowed
    assert not {"PutSecretValue", "DeleteSecret", "CreateSecret", "RotateSecret", "ValidateResourcePolicy"} & allowed


def test_star_allows_all() -> None:
    p = policy(["*"])
    assert all(p.action_allowed(n) for n in MODEL.operation_names)


def test_names_and_globs() -> None:
    p = policy(["GetSecretValue", "Describe*"])
    assert p.action_allowed("GetSecretValue") and p.action_allowed("DescribeSecret")
    assert not p.action_allowed("ListSecrets") and not p.action_allowed("GetSecretValueX")


def test_a_name_that_matches_no_operation_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^policy\.allow_actions\[1\]: 'GetSecretValues' matches no operation"):
        policy(["GetSecretValue", "GetSecretValues"])


def test_denied_action_is_access_denied() -> None:
    with pytest.raises(errors.AccessDenied, match="DeleteSecret"):
        policy().check(op("DeleteSecret", SecretId="a"))


# --- allow_secrets ---------------------------------------------------------------------------------------


def test_secret_names_of_an_arn_drop_the_suffix() -> None:
    assert secret_names("app/db") == ("app/db",)
    assert secret_names(ARN.format("app/db")) == (ARN.format("app/db"), "app/db")
    assert secret_names("arn:aws-cn:secretsmanager:cn-north-1:1:secret:x")[1] == "x"
    assert secret_names("arn:aws:secretsmanager:us-east-1:1:secret:app/db-part-XyZ789")[1] == "app/db-part"


@pytest.mark.parametrize(
    ("patterns", "secret", "allowed"),
    [
        (None, "anything", True),
        ([], "anything", False),
        (["app/*"], "app/db", True),
        (["app/*"], "app/a/b/c", True),  # * crosses /
        (["app/*"], "apps/db", False),
        (["app/*"], "prod/app/db", False),
        (["app/db"], "app/db", True),
        (["app/db"], "app/db2", False),
        (["app/db"], "App/db", False),  # case-sensitive, as secret names are
        (["app/*"], ARN.format("app/db"), True),
        (["app/db"], ARN.format("app/db"), True),
        (["app/*"], ARN.format("prod/db"), False),
        ([ARN.format("prod/db")], ARN.format("prod/db"), True),
        (["arn:aws:secretsmanager:*:*:secret:prod/*"], ARN.format("prod/db"), True),
        (["arn:aws:secretsmanager:*:*:secret:prod/*"], "prod/db", False),
        (["app/?b"], "app/db", True),
        (["app/[de]b"], "app/eb", True),
    ],
)
def test_secret_patterns(patterns: list[str] | None, secret: str, allowed: bool) -> None:
    assert policy(secrets=patterns).secret_allowed(secret) is allowed


def test_every_named_secret_must_be_allowed() -> None:
    p = policy(secrets=["app/*"])
    p.check(op("BatchGetSecretValue", **{"SecretIdList.member.1": "app/a", "SecretIdList.member.2": "app/b"}))
    with pytest.raises(errors.AccessDenied, match="prod/b"):
        p.check(op("BatchGetSecretValue", **{"SecretIdList.member.1": "app/a", "SecretIdList.member.2": "prod/b"}))


def test_create_secret_name_and_cross_account_arns_are_secrets_too() -> None:
    p = policy(["*"], ["app/*"])
    p.check(op("CreateSecret", Name="app/new"))
    with pytest.raises(errors.AccessDenied):
        p.check(op("CreateSecret", Name="prod/new"))
    with pytest.raises(errors.AccessDenied):
        p.check(op("CreateSecret", Name="app/new", CrossAccountPrimaryARN=ARN.format("prod/primary")))
    with pytest.raises(errors.AccessDenied):
        p.check(op("AssociateCrossAccountReplica", SecretId="app/a", CrossAccountReplicaARN=ARN.format("prod/r")))


def test_operations_naming_no_secret_follow_allow_actions_alone() -> None:
    p = policy(secrets=["app/*"])
    p.check(op("ListSecrets"))
    p.check(op("BatchGetSecretValue", **{"Filters.member.1.Key": "name", "Filters.member.1.Values.member.1": "x"}))
    p.check(op("GetRandomPassword"))


def test_answer_filter_only_when_allow_secrets_is_set() -> None:
    assert policy().answer_filter is None
    keep = policy(secrets=["app/*"]).answer_filter
    assert keep is not None and keep("app/x") and not keep("prod/x")


# --- the answer filter (model-driven) --------------------------------------------------------------------


def output(name: str) -> Any:
    return MODEL.operation_model(name).output_shape


def keep_app(secret: str) -> bool:
    return policy(secrets=["app/*"]).secret_allowed(secret)


def test_list_secrets_keeps_only_allowed_entries() -> None:
    answer = {
        "SecretList": [
            {"ARN": ARN.format("app/a"), "Name": "app/a", "Tags": [{"Key": "k", "Value": "v"}]},
            {"ARN": ARN.format("prod/b"), "Name": "prod/b"},
            {"Name": "app/c"},
            {"ARN": ARN.format("app/d")},
        ],
        "NextToken": "n",
    }
    out = visible_output(output("ListSecrets"), answer, keep_app)
    assert [e.get("Name") or e["ARN"] for e in out["SecretList"]] == ["app/a", "app/c", ARN.format("app/d")]
    assert out["NextToken"] == "n" and out["SecretList"][0]["Tags"] == [{"Key": "k", "Value": "v"}]


def test_batch_get_secret_value_filters_values_and_errors() -> None:
    answer = {
        "SecretValues": [
            {"ARN": ARN.format("app/a"), "Name": "app/a", "SecretString": "visible"},
            {"ARN": ARN.format("prod/b"), "Name": "prod/b", "SecretString": "hidden"},
        ],
        "Errors": [{"SecretId": "prod/c", "ErrorCode": "ResourceNotFoundException"}, {"SecretId": "app/e"}],
    }
    out = visible_output(output("BatchGetSecretValue"), answer, keep_app)
    assert out == {
        "SecretValues": [{"ARN": ARN.format("app/a"), "Name": "app/a", "SecretString": "visible"}],
        "Errors": [{"SecretId": "app/e"}],
    }
    assert "hidden" not in repr(out)


def test_an_answer_about_another_secret_is_not_found() -> None:
    """allow_secrets [app/db]: the partial ARN ``...:secret:app/db-foobar`` reads as app/db plus a suffix and
    passes the request check, but AWS may resolve it to the secret named app/db-foobar: its answer is refused as
    a secret that does not exist would be."""
    p = policy(secrets=["app/db"])
    partial = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-foobar"
    p.check(op("GetSecretValue", SecretId=partial))
    keep = p.answer_filter
    assert keep is not None
    visible_output(output("GetSecretValue"), {"ARN": ARN.format("app/db"), "Name": "app/db"}, keep)
    with pytest.raises(errors.SecretNotFound):
        visible_output(output("GetSecretValue"), {"ARN": ARN.format("app/db-foobar"), "Name": "app/db-foobar"}, keep)
    # a write by it could reach app/db-foobar unseen: refused before any call; by a covering pattern, allowed
    write = op("PutSecretValue", SecretId=partial, SecretString="x")
    with pytest.raises(errors.AccessDenied, match="partial ARN of 'app/db-foobar'"):
        policy(["*"], ["app/db"]).check(write)
    for covering in (["app/db*"], ["app/db", "app/db-foobar"], ["app/db", partial], ["arn:*:secret:app/db-*"]):
        policy(["*"], covering).check(write)


def test_things_that_are_not_secrets_are_left_alone() -> None:
    """ValidationErrorsEntry.CheckName has NameType, which also names secrets in inputs: not filtered."""
    answer = {"PolicyValidationPassed": False, "ValidationErrors": [{"CheckName": "x", "ErrorMessage": "m"}]}
    assert visible_output(output("ValidateResourcePolicy"), answer, keep_app) == answer
    assert visible_output(output("GetRandomPassword"), {"RandomPassword": "p"}, keep_app) == {"RandomPassword": "p"}
