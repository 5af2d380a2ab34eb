"""The credential detector (:mod:`proxy.guard`) over every operation of every service the proxy accepts.

``tests/data/credential_operations.txt`` is the reviewed list of what the detector flags, one
``service Operation  # why`` a line, across every service botocore ships whose protocol the proxy serves
(:data:`proxy.dispatch.PROTOCOLS`), reviewed against the botocore release its ``# botocore`` line names.
With that release installed the detector must flag exactly the list. With another (a fresh install takes
the newest botocore), an operation the detector stops flagging while its service is still accepted fails
the test: that is the detector losing a credential. New flags only warn: a flagged operation is refused
unless named, the safe side, and the warning asks for a review (is it a credential? personal data refused on
the safe side?). Operations gone from botocore, or services whose protocol the proxy no longer serves, are
not losses. After reviewing, rewrite the file with ``python -m tests.unit.test_credential_operations``.

The oracle below is the list of operations known to hand out credentials or passwords; each must be flagged
whatever the list file says, and the operations after it must stay served.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import botocore
import botocore.session
import pytest

from proxy.dispatch import PROTOCOLS
from proxy.guard import credential_operations, credential_reason

LIST_FILE = Path(__file__).resolve().parents[1] / "data" / "credential_operations.txt"
SESSION = botocore.session.get_session()

# Operations known to hand out credentials, passwords, keys or tokens (issue 13, and more of the same class).
KNOWN_CREDENTIAL_OPERATIONS = [
    ("ecr", "GetAuthorizationToken"),  # a Docker registry password made from the role's credentials
    ("ecr-public", "GetAuthorizationToken"),
    ("lightsail", "GetRelationalDatabaseMasterUserPassword"),
    ("lightsail", "GetKeyPair"),
    ("lightsail", "DownloadDefaultKeyPair"),  # privateKeyBase64
    ("lightsail", "GetInstanceAccessDetails"),  # an SSH private key or a Windows password
    ("lightsail", "CreateBucketAccessKey"),
    ("lightsail", "CreateContainerServiceRegistryLogin"),
    ("sts", "AssumeRole"),
    ("sts", "AssumeRoleWithSAML"),
    ("sts", "AssumeRoleWithWebIdentity"),
    ("sts", "AssumeRoot"),
    ("sts", "GetSessionToken"),
    ("sts", "GetFederationToken"),
    ("iam", "CreateAccessKey"),
    ("iam", "CreateServiceSpecificCredential"),
    ("iam", "ResetServiceSpecificCredential"),
    ("iam", "CreateLoginProfile"),
    ("redshift", "GetClusterCredentials"),
    ("redshift", "GetClusterCredentialsWithIAM"),
    ("redshift", "GetIdentityCenterAuthToken"),
    ("redshift-serverless", "GetCredentials"),
    ("cognito-identity", "GetCredentialsForIdentity"),
    ("cognito-identity", "GetOpenIdToken"),
    ("cognito-idp", "InitiateAuth"),  # ID, access and refresh tokens
    ("cognito-idp", "DescribeUserPoolClient"),  # the client secret
    ("kms", "GenerateDataKey"),  # the plaintext data key
    ("kms", "Decrypt"),
    ("acm", "ExportCertificate"),  # the private key
    ("ssm", "GetParameter"),  # SecureString values
    ("ssm", "GetAccessToken"),
    ("ssm", "StartSession"),  # the session token
    ("ssm", "CreateActivation"),  # ActivationCode: "functions like a password", exchanged for role credentials
    ("emr", "GetClusterSessionCredentials"),
    ("glue", "GetConnection"),  # ConnectionProperties {PASSWORD: ...}
    ("sagemaker", "CreatePresignedDomainUrl"),  # a URL that logs into Studio
    ("license-manager", "GetAccessToken"),
    ("workmail", "AssumeImpersonationRole"),
    ("wafv2", "CreateAPIKey"),
]

# Reads whose output holds a list of items the model marks sensitive (not a member): refused on the safe side.
SENSITIVE_LIST_ITEMS = [("proton", "ListServiceInstanceOutputs"), ("frauddetector", "GetListElements")]

# Operations that must stay served: the product's purpose, and reads that carry no credential.
NOT_CREDENTIAL_OPERATIONS = [
    ("secretsmanager", "GetSecretValue"),
    ("secretsmanager", "BatchGetSecretValue"),
    ("secretsmanager", "GetRandomPassword"),
    ("secretsmanager", "ListSecrets"),
    ("secretsmanager", "DescribeSecret"),
    ("sts", "GetCallerIdentity"),
    ("sts", "GetAccessKeyInfo"),
    ("sns", "ListTopics"),
    ("sqs", "ReceiveMessage"),
    ("iam", "ListAccessKeys"),
    ("iam", "GetAccessKeyLastUsed"),
    ("kms", "DescribeKey"),
    ("ecr", "DescribeRepositories"),
    ("wafv2", "GetWebACL"),  # a LockToken (optimistic concurrency) is no credential
    ("athena", "ListWorkGroups"),  # NextToken
    ("logs", "DescribeLogStreams"),  # uploadSequenceToken
]


def accepted_services() -> list[str]:
    """Every botocore service the proxy can front (its model's protocol has a pipeline)."""
    return [s for s in SESSION.get_available_services() if SESSION.get_service_model(s).protocol in PROTOCOLS]


def detected() -> list[str]:
    """What the detector flags now, in the list file's format."""
    lines = []
    for service in accepted_services():
        model = SESSION.get_service_model(service)
        for name in model.operation_names:
            reason = credential_reason(model, name)
            if reason is not None:
                lines.append(f"{service} {name}  # {reason}")
    return lines


def reviewed() -> list[str]:
    text = LIST_FILE.read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def reviewed_release() -> str:
    """The botocore release the list was reviewed against (its ``# botocore X.Y.Z`` line)."""
    for line in LIST_FILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("# botocore "):
            return line.split()[2]
    raise AssertionError(f"{LIST_FILE.name} has no '# botocore X.Y.Z' line")


def operation_of_line(line: str) -> str:
    """``service Operation`` of a list line (without its reason)."""
    return line.split("  #")[0]


def still_served(line: str, accepted: set[str]) -> bool:
    """Whether a list line's operation still exists in a service the proxy accepts (``accepted``)."""
    service, operation = operation_of_line(line).split()
    return service in accepted and operation in SESSION.get_service_model(service).operation_names


def test_the_detector_flags_exactly_the_reviewed_list() -> None:
    now, kept = detected(), reviewed()
    added = sorted(set(now) - set(kept))
    gone = sorted(set(kept) - set(now))
    advice = f"review, then rewrite {LIST_FILE.name} with 'python -m tests.unit.test_credential_operations'"
    if botocore.__version__ == reviewed_release():
        assert not added and not gone, (
            f"the detector's output differs from {LIST_FILE.name}: {advice}\nnew:\n  "
            + "\n  ".join(added)
            + "\ngone:\n  "
            + "\n  ".join(gone)
        )
        return
    flagged, accepted = {operation_of_line(line) for line in now}, set(accepted_services())
    # lost: no longer flagged at all (a changed reason for a still-flagged operation is not a loss)
    lost = [line for line in gone if operation_of_line(line) not in flagged and still_served(line, accepted)]
    assert not lost, "the detector no longer flags operations it flagged:\n  " + "\n  ".join(lost)
    if added:
        warnings.warn(
            f"botocore {botocore.__version__} (the list: {reviewed_release()}): {len(added)} operations newly "
            f"flagged, refused unless named: {advice}",
            stacklevel=1,
        )


@pytest.mark.parametrize(("service", "operation"), KNOWN_CREDENTIAL_OPERATIONS)
def test_every_known_credential_operation_is_flagged(service: str, operation: str) -> None:
    model = SESSION.get_service_model(service)
    assert credential_reason(model, operation) is not None
    assert operation in credential_operations(model)
    if model.protocol in PROTOCOLS:  # the proxy accepts the service (a protocol it has no pipeline for is refused)
        assert f"{service} {operation}" in {operation_of_line(line) for line in reviewed()}


@pytest.mark.parametrize(("service", "operation"), SENSITIVE_LIST_ITEMS)
def test_sensitive_list_items_are_flagged(service: str, operation: str) -> None:
    reason = credential_reason(SESSION.get_service_model(service), operation)
    assert reason is not None and reason.endswith("[]: sensitive")


@pytest.mark.parametrize(("service", "operation"), NOT_CREDENTIAL_OPERATIONS)
def test_reads_without_credentials_are_not_flagged(service: str, operation: str) -> None:
    assert credential_reason(SESSION.get_service_model(service), operation) is None


def main() -> None:
    """Rewrite the list file from the detector (after reviewing the diff the test shows)."""
    header = [
        line
        for line in LIST_FILE.read_text(encoding="utf-8").splitlines()
        if line.startswith("#") and not line.startswith("# botocore ")
    ]
    release = f"# botocore {botocore.__version__} (the release this list was reviewed against)"
    LIST_FILE.write_text("\n".join([*header, release, *detected()]) + "\n", encoding="utf-8")
    print(f"wrote {LIST_FILE}", file=sys.stderr)


if __name__ == "__main__":
    main()
