"""The caller's region (docs/interface.md, "SDK calls", issue 15): an SDK call goes to the region it was signed
for when the operator allows it (``upstream.regions``), and is refused naming both regions when not; Query
callers, unsigned, get ``upstream.region``. Against moto's server with signature checking on, which keeps each
region's secrets apart by the region of the proxy's signature."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from proxy.local import REGION
from tests.support import legacy_client, raw_request, sdk_client

OTHER = "eu-west-1"
THIRD = "ap-southeast-2"


def names(client: Any) -> set[str]:
    return {s["Name"] for s in client.list_secrets(MaxResults=100)["SecretList"]}


def test_an_sdk_call_goes_to_the_region_it_was_signed_for(start_proxy: Any, emulator: Any, tmp_path: Any) -> None:
    proxy = start_proxy(policy={"allow_actions": ["*"]}, upstream={"regions": [OTHER, THIRD]})
    name = f"regions/{uuid.uuid4().hex[:8]}"
    made = sdk_client(proxy.url, region=OTHER).create_secret(Name=name, SecretString="in eu-west-1")
    assert made["ARN"].startswith(f"arn:aws:secretsmanager:{OTHER}:")
    # it is in eu-west-1, and only there
    assert emulator.direct(region=OTHER).get_secret_value(SecretId=name)["SecretString"] == "in eu-west-1"
    assert name not in names(emulator.direct(region=REGION))
    assert name not in names(emulator.direct(region=THIRD))
    # read back through the proxy in its region; from upstream.region it does not exist
    assert sdk_client(proxy.url, region=OTHER).get_secret_value(SecretId=made["ARN"])["Name"] == name
    with pytest.raises(ClientError) as missing:
        sdk_client(proxy.url, region=REGION).get_secret_value(SecretId=name)
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    # a Query caller (unsigned) reads upstream.region
    legacy = legacy_client(proxy.url, str(tmp_path))
    assert name not in {s["Name"] for s in legacy.list_secrets(MaxResults=100)["SecretList"]}


def test_a_region_the_listener_does_not_serve_is_refused_naming_both(start_proxy: Any, emulator: Any) -> None:
    proxy = start_proxy(policy={"allow_actions": ["*"]})
    name = f"regions/{uuid.uuid4().hex[:8]}"
    with pytest.raises(ClientError) as refused:
        sdk_client(proxy.url, region=OTHER).create_secret(Name=name, SecretString="nowhere")
    error = refused.value.response["Error"]
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Code"] == "InvalidRequestException"
    assert OTHER in error["Message"] and REGION in error["Message"] and "upstream.regions" in error["Message"]
    # nothing reached AWS in either region
    assert name not in names(emulator.direct(region=OTHER)) | names(emulator.direct(region=REGION))
    # the same listener with the region allowed
    allowed = start_proxy(policy={"allow_actions": ["*"]}, upstream={"regions": [OTHER]})
    with pytest.raises(ClientError) as still:
        sdk_client(allowed.url, region=THIRD).get_secret_value(SecretId=name)
    assert still.value.response["Error"]["Code"] == "InvalidRequestException"
    assert THIRD in still.value.response["Error"]["Message"] and OTHER in still.value.response["Error"]["Message"]


@pytest.mark.parametrize(
    "authorization",
    [
        None,  # unsigned
        "AWS4-HMAC-SHA256 Credential=AKID/20240101//secretsmanager/aws4_request, SignedHeaders=host, Signature=0",
        "AWS4-ECDSA-P256-SHA256 Credential=AKID/20240101/secretsmanager/aws4_request, Signature=0",  # SigV4a
    ],
)
def test_a_call_that_names_no_region_goes_to_upstream_region(start_proxy: Any, authorization: str | None) -> None:
    proxy = start_proxy(policy={"allow_actions": ["*"]})
    headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "secretsmanager.ListSecrets"}
    if authorization is not None:
        headers["Authorization"] = authorization
    r = raw_request(proxy.port, "POST", "/", b"{}", headers=headers)
    assert r.status == 200, r.body
    assert "SecretList" in json.loads(r.body)


def test_any_other_region_is_refused(start_proxy: Any) -> None:
    proxy = start_proxy(policy={"allow_actions": ["*"]})
    forged = "AWS4-HMAC-SHA256 Credential=AKID/20240101/evil-region-9/secretsmanager/aws4_request, Signature=0"
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "secretsmanager.ListSecrets",
        "Authorization": forged,
    }
    r = raw_request(proxy.port, "POST", "/", b"{}", headers=headers)
    doc = json.loads(r.body)
    assert (r.status, doc["__type"]) == (400, "InvalidRequestException")
    assert "evil-region-9" in doc["message"] and REGION in doc["message"]


def test_a_listing_token_is_bound_to_its_region(start_proxy: Any, emulator: Any) -> None:
    """Under ``allow_secrets`` the proxy pages listings itself with its own NextToken: one handed out for a
    region's listing continues that listing only, never another region's."""
    prefix = f"regions-list/{uuid.uuid4().hex[:8]}"
    for i in range(3):
        emulator.direct(region=OTHER).create_secret(Name=f"{prefix}/{i}", SecretString="x")
    proxy = start_proxy(policy={"allow_actions": ["*"], "allow_secrets": [f"{prefix}/*"]}, upstream={"regions": [OTHER]})
    eu = sdk_client(proxy.url, region=OTHER)
    filters = [{"Key": "name", "Values": [prefix]}]
    first = eu.list_secrets(MaxResults=1, Filters=filters)
    assert [s["Name"] for s in first["SecretList"]] == [f"{prefix}/0"] and first.get("NextToken")
    following = eu.list_secrets(MaxResults=1, Filters=filters, NextToken=first["NextToken"])
    assert [s["Name"] for s in following["SecretList"]] == [f"{prefix}/1"]
    with pytest.raises(ClientError) as refused:
        sdk_client(proxy.url, region=REGION).list_secrets(MaxResults=1, Filters=filters, NextToken=first["NextToken"])
    assert refused.value.response["Error"]["Code"] == "InvalidNextTokenException"
