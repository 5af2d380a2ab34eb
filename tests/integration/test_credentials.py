"""Credentials that never expire under the app (issue 4), through the real listener against a test STS and a
test upstream that verifies every signature with botocore, under a fake clock (no real waiting)."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import pytest

from proxy.config import default_session_name
from proxy.credentials import RETRY_MAX_SECONDS
from tests.fakeaws import DENIED, OUTAGE, FakeAWS, wait_until

MINUTE = 60.0
assert MINUTE >= RETRY_MAX_SECONDS  # a minute of fake time passes any backoff after a failure


def role(**extra: Any) -> dict[str, Any]:
    return {"credentials": {"role_arn": FakeAWS.ROLE_ARN, **extra}}


# ---------------------------------------------------------------------------------------------------------
# refresh ahead, once


def test_900_second_credentials_at_0_16_and_61_minutes(aws: FakeAWS) -> None:
    aws.env_keys()
    proxy = aws.start_proxy(**role(duration_seconds=900))
    first = aws.ok(proxy)
    for _ in range(5):
        assert aws.ok(proxy) == first
    assert len(aws.sts.issued("AssumeRole")) == 1  # not one STS call per request
    first_token = aws.upstream.calls[-1].token

    aws.advance(16 * MINUTE)
    second = aws.ok(proxy)
    assert second != first
    assert aws.upstream.calls[-1].token != first_token

    aws.advance(45 * MINUTE)
    third = aws.ok(proxy)
    assert third not in (first, second)
    assert all(c.status == 200 for c in aws.upstream.calls)  # never signed with expired credentials
    assert all(c.error is None for c in aws.sts.calls)


def test_refresh_starts_at_half_life_and_never_per_request(aws: FakeAWS) -> None:
    aws.env_keys()
    proxy = aws.start_proxy(**role(duration_seconds=900))
    first = aws.ok(proxy)
    aws.advance(7 * MINUTE)  # before half of 900 s
    assert aws.ok(proxy) == first
    assert len(aws.sts.calls) == 1
    aws.advance(1 * MINUTE)  # past half: the refresher fetches in the background
    wait_until(lambda: len(aws.sts.issued()) == 2, what="the refresh at half life")
    aws.settle(proxy)
    for _ in range(10):
        aws.ok(proxy)
    assert len(aws.sts.calls) == 2
    assert aws.upstream.calls[-1].access_key == aws.sts.issued()[-1].issued.access_key  # type: ignore[union-attr]


def test_requests_with_valid_credentials_never_wait_for_sts(aws: FakeAWS) -> None:
    aws.env_keys()
    proxy = aws.start_proxy(**role(duration_seconds=900))
    first = aws.ok(proxy)
    aws.sts.gate.close()  # STS answers only when the test says so
    aws.advance(8 * MINUTE)  # refresh due, credentials still valid for 7 minutes
    wait_until(lambda: aws.sts.waiting == 1, what="the background refresh to reach STS")
    for _ in range(10):
        assert aws.ok(proxy) == first  # answered while the STS call is still open
    assert aws.sts.waiting == 1 and len(aws.sts.calls) == 2
    aws.sts.gate.open()
    wait_until(lambda: len(aws.sts.issued()) == 2, what="the stalled refresh to finish")
    wait_until(lambda: aws.ok(proxy) != first, what="requests signed with the new key")
    assert len(aws.sts.calls) == 2


def test_concurrent_requests_without_credentials_share_one_sts_call(aws: FakeAWS) -> None:
    aws.env_keys()
    proxy = aws.start_proxy(**role(duration_seconds=900))
    first = aws.ok(proxy)
    aws.sts.gate.close()
    aws.advance(20 * MINUTE)  # expired: every request needs the refresh
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(aws.get_secret, proxy) for _ in range(20)]
        wait_until(lambda: aws.metric(proxy, "requests_in_flight") == 20, what="20 requests waiting")
        wait_until(lambda: aws.sts.waiting == 1, what="the one STS call")
        aws.sts.gate.open()
        answers = [f.result(30) for f in futures]
    assert [a.status for a in answers] == [200] * 20
    assert len(aws.sts.calls) == 2
    new_keys = {c.access_key for c in aws.upstream.calls[1:]}
    assert new_keys == {aws.sts.issued()[-1].issued.access_key} and first not in new_keys  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------------------
# STS outages


def test_sts_down_for_20_minutes_no_request_fails(aws: FakeAWS) -> None:
    aws.env_keys()
    proxy = aws.start_proxy(**role(duration_seconds=3600))
    first = aws.ok(proxy)
    aws.sts.failure = OUTAGE
    aws.advance(30 * MINUTE)  # the refresh is due; STS fails from now on for 20 minutes

    def failed() -> int:
        return len([c for c in aws.sts.calls if c.error])

    wait_until(lambda: failed() == 1, what="the first failed refresh")
    aws.settle(proxy)
    for minute in range(1, 21):
        aws.advance(MINUTE)  # the longest backoff (RETRY_MAX_SECONDS) from the settled failure: one more try
        wait_until(lambda: failed() == minute + 1, what=f"the retry in minute {minute}")  # noqa: B023
        aws.settle(proxy)
        for _ in range(3):  # requests keep the current credentials and never call STS themselves
            assert aws.ok(proxy) == first
        assert aws.get(proxy, "/readyz").status == 200
        assert len(aws.sts.calls) == minute + 2
    assert aws.metric(proxy, "credential_refreshes_total", '{result="error"}') == 21
    aws.sts.failure = None
    aws.advance_until(proxy, lambda: len(aws.sts.issued()) == 2, what="recovery")
    aws.settle(proxy)
    assert aws.ok(proxy) != first
    assert all(c.status == 200 for c in aws.upstream.calls)


def test_sts_down_past_expiry_readyz_503_then_recovers(aws: FakeAWS) -> None:
    aws.env_keys()
    proxy = aws.start_proxy(**role(duration_seconds=3600))
    first = aws.ok(proxy)
    aws.sts.failure = OUTAGE
    aws.advance(60 * MINUTE - 31)  # 31 s of validity left
    wait_until(lambda: any(c.error for c in aws.sts.calls), what="a failed refresh")
    aws.settle(proxy)  # the proxy has seen the failure (readyz names it below), not only the fake STS
    assert aws.ok(proxy) == first
    assert aws.get(proxy, "/readyz").status == 200
    aws.advance(2)  # 29 s left: too close to expiry to sign with
    ready = aws.get(proxy, "/readyz")
    assert ready.status == 503 and b"ServiceUnavailable" in ready.body
    resp = aws.get_secret(proxy)
    assert resp.status == 503
    assert b"<Code>CredentialsUnavailable</Code>" in resp.body
    assert aws.get(proxy, "/healthz").status == 200
    aws.recover(proxy)
    assert aws.ok(proxy) != first


def test_role_that_cannot_be_assumed_at_start_is_not_an_exit(aws: FakeAWS) -> None:
    aws.env_keys()
    aws.sts.failure = DENIED
    proxy = aws.start_proxy(**role())
    wait_until(lambda: any(c.error for c in aws.sts.calls), what="the first AssumeRole")
    aws.settle(proxy)
    assert aws.get(proxy, "/healthz").status == 200
    ready = aws.get(proxy, "/readyz")
    assert ready.status == 503 and b"AccessDenied" in ready.body
    resp = aws.get_secret(proxy)
    assert resp.status == 503 and b"<Code>CredentialsUnavailable</Code>" in resp.body
    assert not aws.upstream.calls
    aws.recover(proxy)
    aws.ok(proxy)


# ---------------------------------------------------------------------------------------------------------
# revoked early


def test_upstream_answers_expired_token_once(aws: FakeAWS) -> None:
    aws.env_keys()
    proxy = aws.start_proxy(**role())
    first = aws.ok(proxy)
    aws.upstream.fail_next.append(
        (400, "ExpiredTokenException", "The security token included in the request is expired")
    )
    second = aws.ok(proxy)
    assert second != first
    assert [c.code for c in aws.upstream.calls[-2:]] == ["ExpiredTokenException", None]
    assert len(aws.sts.issued()) == 2


def test_credentials_revoked_before_their_expiry(aws: FakeAWS) -> None:
    aws.env_keys()
    proxy = aws.start_proxy(**role())
    first = aws.ok(proxy)
    aws.ring.revoke(first)
    assert aws.ok(proxy) != first
    assert aws.upstream.calls[-2].code == "UnrecognizedClientException"


def test_expired_token_during_an_sts_outage_is_credentials_unavailable(aws: FakeAWS) -> None:
    aws.env_keys()
    proxy = aws.start_proxy(**role(), upstream={"max_attempts": 3})
    first = aws.ok(proxy)
    aws.sts.failure = OUTAGE
    aws.ring.revoke(first)
    resp = aws.get_secret(proxy)
    assert resp.status == 503 and b"<Code>CredentialsUnavailable</Code>" in resp.body
    calls = len(aws.sts.calls)
    assert aws.get(proxy, "/readyz").status == 503  # the refused credentials are not used again
    for _ in range(5):  # backing off: no STS call per request
        assert aws.get_secret(proxy).status == 503
    assert len(aws.sts.calls) == calls
    assert len(aws.upstream.calls) == 2
    aws.recover(proxy)
    assert aws.ok(proxy) != first


# ---------------------------------------------------------------------------------------------------------
# token files


def test_web_identity_token_swapped_through_symlink(aws: FakeAWS) -> None:
    swap = aws.irsa(token="token-1")
    aws.sts.web_identity_tokens = {"token-1"}
    proxy = aws.start_proxy()  # IRSA signs directly; STS gives it 3600 s
    first = aws.ok(proxy)
    swap("token-2")  # kubelet rotates the projected token
    aws.sts.web_identity_tokens = {"token-2"}  # and the old one is no longer accepted
    aws.advance(31 * MINUTE)  # botocore's own cache would still hold the first credentials here
    wait_until(lambda: len(aws.sts.issued()) == 2, what="the refresh with the new token")
    aws.settle(proxy)
    assert [c.params["WebIdentityToken"] for c in aws.sts.calls] == ["token-1", "token-2"]
    assert all(c.error is None for c in aws.sts.calls)
    assert aws.ok(proxy) != first


def test_pod_identity_token_swapped_through_symlink(aws: FakeAWS) -> None:
    swap = aws.pod_identity(token="pod-token-1")
    assert aws.container is not None
    aws.container.lifetime = 900
    proxy = aws.start_proxy()
    first = aws.ok(proxy)
    swap("pod-token-2")
    aws.advance(8 * MINUTE)
    wait_until(lambda: aws.ok(proxy) != first, what="the refreshed credentials")
    assert [c["token"] for c in aws.container.calls] == ["pod-token-1", "pod-token-2"]


# ---------------------------------------------------------------------------------------------------------
# sources through botocore's providers, with and without a role on top

PROFILE_STATIC = """\
[profile app]
aws_access_key_id = {access_key}
aws_secret_access_key = {secret_key}
"""
PROFILE_ROLE = """\
[profile base]
aws_access_key_id = {access_key}
aws_secret_access_key = {secret_key}

[profile app]
role_arn = arn:aws:iam::123456789012:role/profile-role
source_profile = base
"""


def use_source(aws: FakeAWS, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """Set the environment for ``source``; returns the origin of the keys it yields (the key ring's)."""
    if source == "env":
        aws.env_keys()
        return "static"
    if source in ("profile", "profile-role"):
        key = aws.ring.static()
        text = PROFILE_STATIC if source == "profile" else PROFILE_ROLE
        aws.config_file(text.format(access_key=key.access_key, secret_key=key.secret_key))
        monkeypatch.setenv("AWS_PROFILE", "app")
        return "static" if source == "profile" else "AssumeRole"
    if source == "irsa":
        aws.irsa()
        return "AssumeRoleWithWebIdentity"
    if source == "pod-identity":
        aws.pod_identity()
        return "container"
    assert source == "imds"
    aws.instance_metadata()
    return "imds"


SOURCES = ["env", "profile", "profile-role", "irsa", "pod-identity", "imds"]


def source_calls(aws: FakeAWS, source: str) -> int:
    """Calls made to the source itself (not to the chained role)."""
    if source == "pod-identity":
        return len(aws.container.calls)  # type: ignore[union-attr]
    if source == "imds":
        return aws.imds.calls.count("credentials")  # type: ignore[union-attr]
    if source == "irsa":
        return len(aws.sts.issued("AssumeRoleWithWebIdentity"))
    if source == "profile-role":
        return len([c for c in aws.sts.issued("AssumeRole") if "profile-role" in c.params["RoleArn"]])
    return 0


@pytest.mark.parametrize("source", SOURCES)
def test_source_signs_directly(aws: FakeAWS, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    origin = use_source(aws, monkeypatch, source)
    proxy = aws.start_proxy()
    key = aws.ok(proxy)
    assert aws.ring.get(key).origin == origin  # type: ignore[union-attr]
    for _ in range(5):
        assert aws.ok(proxy) == key
    calls = source_calls(aws, source)
    assert calls <= 1  # a refreshable source is called once, not per request (static ones never)


@pytest.mark.parametrize("source", SOURCES)
def test_role_chained_on_source(aws: FakeAWS, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    origin = use_source(aws, monkeypatch, source)
    proxy = aws.start_proxy(**role())
    key = aws.ok(proxy)
    assert aws.ring.get(key).origin == "AssumeRole"  # type: ignore[union-attr]
    (call,) = [c for c in aws.sts.issued("AssumeRole") if c.params["RoleArn"] == FakeAWS.ROLE_ARN]
    assert call.issued is not None and call.issued.access_key == key
    assert aws.ring.get(call.signer or "").origin == origin  # type: ignore[union-attr]
    assert call.params["RoleSessionName"] == default_session_name()  # the per-host default


def test_refreshable_source_without_role_refreshes_once_per_half_life(aws: FakeAWS) -> None:
    aws.irsa()
    aws.sts.lifetimes["AssumeRoleWithWebIdentity"] = 900  # inside botocore's 15-minute advisory window
    proxy = aws.start_proxy()
    first = aws.ok(proxy)
    for _ in range(10):
        assert aws.ok(proxy) == first
    assert len(aws.sts.calls) == 1
    aws.advance(8 * MINUTE)
    wait_until(lambda: len(aws.sts.calls) == 2, what="one refresh")
    for _ in range(10):
        aws.ok(proxy)
    assert len(aws.sts.calls) == 2


def test_role_chain_refreshes_its_source_when_due(aws: FakeAWS) -> None:
    aws.irsa()
    aws.sts.lifetimes["AssumeRoleWithWebIdentity"] = 900
    proxy = aws.start_proxy(**role(duration_seconds=3600))
    first = aws.ok(proxy)
    assert [c.action for c in aws.sts.calls] == ["AssumeRoleWithWebIdentity", "AssumeRole"]
    aws.advance(31 * MINUTE)  # the role is due; its web-identity source expired long ago
    wait_until(lambda: len(aws.sts.issued("AssumeRole")) == 2, what="the role refresh")
    aws.settle(proxy, "AssumeRole")
    web2, role2 = aws.sts.calls[2:]
    assert web2.action == "AssumeRoleWithWebIdentity" and role2.action == "AssumeRole"
    assert role2.signer == web2.issued.access_key  # type: ignore[union-attr]
    assert all(c.error is None for c in aws.sts.calls)
    assert aws.ok(proxy) != first


def test_assume_role_parameters(aws: FakeAWS) -> None:
    aws.env_keys()
    proxy = aws.start_proxy(
        **role(
            role_session_name="pod-a",
            external_id="ext-123",
            duration_seconds=1800,
            session_tags={"team": "payments", "env": "prod"},
            source_identity="alice",
        )
    )
    aws.ok(proxy)
    (call,) = aws.sts.calls
    assert call.params["RoleArn"] == FakeAWS.ROLE_ARN
    assert call.params["RoleSessionName"] == "pod-a"
    assert call.params["ExternalId"] == "ext-123"
    assert call.params["DurationSeconds"] == "1800"
    assert call.params["SourceIdentity"] == "alice"
    tags = {call.params[f"Tags.member.{i}.Key"]: call.params[f"Tags.member.{i}.Value"] for i in (1, 2)}
    assert tags == {"team": "payments", "env": "prod"}


# ---------------------------------------------------------------------------------------------------------
# metrics


def test_metrics_expiry_seconds_and_refreshes_by_result(aws: FakeAWS) -> None:
    aws.env_keys()
    proxy = aws.start_proxy(**role(duration_seconds=900))
    aws.ok(proxy)
    assert aws.metric(proxy, "credential_expiry_seconds") == 900
    assert aws.metric(proxy, "credential_refreshes_total", '{result="success"}') == 1
    aws.advance(100)
    assert aws.metric(proxy, "credential_expiry_seconds") == 800
    aws.sts.failure = OUTAGE
    aws.advance(400)  # due at 450 s
    wait_until(lambda: any(c.error for c in aws.sts.calls), what="a failed refresh")
    wait_until(
        lambda: aws.metric(proxy, "credential_refreshes_total", '{result="error"}', default=0) == 1,
        what="the error count",
    )
    assert aws.metric(proxy, "credential_expiry_seconds") == 400


def test_role_chain_fetches_its_source_again_after_sts_refused_it(aws: FakeAWS) -> None:
    aws.irsa()
    proxy = aws.start_proxy(**role(duration_seconds=900))
    first = aws.ok(proxy)
    web_identity_key = aws.sts.issued("AssumeRoleWithWebIdentity")[0].issued
    assert web_identity_key is not None
    aws.ring.revoke(web_identity_key.access_key)  # still valid by the clock, but STS now refuses it
    aws.advance(8 * MINUTE)
    wait_until(lambda: any(c.error == "InvalidClientTokenId" for c in aws.sts.calls), what="the refused AssumeRole")
    aws.settle(proxy, "AssumeRole")
    aws.advance(MINUTE)  # past the backoff: the retry fetches the source first
    wait_until(lambda: aws.ok(proxy) != first, what="the role assumed with fresh source credentials")
    assert [c.action for c in aws.sts.calls] == [
        "AssumeRoleWithWebIdentity",
        "AssumeRole",
        "AssumeRole",
        "AssumeRoleWithWebIdentity",
        "AssumeRole",
    ]
