"""Operations that hand out credentials: denied unless ``policy.allow_actions`` names them (docs/interface.md,
"Policy").

The proxy exists so that the app never holds a key. A fronted service would undo that with one ``AssumeRole``
(sts), ``CreateAccessKey`` (iam), ``GetAuthorizationToken`` (ecr: a registry password made from the role's
credentials), ``GetRelationalDatabaseMasterUserPassword`` (lightsail) or ``GetClusterCredentials``
(redshift). Which operations do so is read from botocore's model of the service, for every service the
proxy accepts (:data:`proxy.dispatch.PROTOCOLS`), so that an operation AWS adds later is classified without
a code change. An operation hands out credentials when (:func:`credential_reason`):

* its output shape holds, at any depth, a member, a list item or a map key or value marked ``sensitive`` in
  the model (the model's own word for "do not log this": passwords, keys, tokens, and sometimes personal data;
  refusing those too is the safe side, and ``allow_actions`` serves them when it names them);
* or a member whose name says it carries a credential (:func:`credential_member`): a password, a token that
  is not a pagination or concurrency token, a secret, a private, secret, access or API key, an activation,
  authorization or unlock code, credentials, a key pair, a pre-signed URL; the name is split into words
  (``authorizationToken`` -> authorization, token), and its shape's type must be able to carry the value (a
  string, a blob; a structure or list for ``Credentials`` and key pairs), so ``PasswordLastUsed`` (a
  timestamp), ``CredentialArn`` and ``UseExistingClientSecret`` (a boolean) do not count; the same words in
  the keys of a map whose key shape is an enum count too (glue ``ConnectionProperties``: ``{"PASSWORD": ...}``);
* or a member named in :data:`CREDENTIAL_OUTPUT_MEMBERS`, whatever its shape;
* or its name matches :data:`CREDENTIAL_ACTIONS` (credentials the output shape cannot show: a login profile
  set by the call), or says it makes a pre-signed URL.

Secrets Manager's secret-value operations (:data:`PRODUCT_OPERATIONS`) are the product's purpose and stay
readable: ``GetSecretValue``, ``BatchGetSecretValue``, and ``GetRandomPassword``, which mints nothing.

Such an operation is allowed only when ``allow_actions`` lists its exact name: ``"*"`` and patterns such as
``Get*`` never enable it (``GetSessionToken`` is a ``Get*``). What the detector flags across botocore's
services is kept, reviewed, in ``tests/data/credential_operations.txt`` (a test compares them).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from botocore.model import ListShape, MapShape, ServiceModel, Shape, StructureShape

from . import errors
from .models import Operation

# Output members that carry a credential, a password or a bearer token, whatever their shape.
CREDENTIAL_OUTPUT_MEMBERS = frozenset(
    {
        "SecretAccessKey",  # sts Credentials, iam AccessKey, ssm GetAccessToken
        "SecretKey",  # cognito-identity Credentials
        "SessionToken",
        "ServicePassword",  # iam CreateServiceSpecificCredential
        "DbPassword",  # redshift GetClusterCredentials
        "Token",  # cognito-identity GetOpenIdToken, redshift GetIdentityCenterAuthToken
        "WebIdentityToken",
    }
)

# service -> operation name patterns that hand out credentials whatever their output shape says.
CREDENTIAL_ACTIONS: dict[str, tuple[str, ...]] = {
    "sts": ("AssumeRole*", "AssumeRoot", "GetSessionToken", "GetFederationToken", "Get*Token", "Get*Credentials"),
    "iam": (
        "CreateAccessKey",
        "CreateServiceSpecificCredential",
        "ResetServiceSpecificCredential",
        "CreateLoginProfile",
        "UpdateLoginProfile",
    ),
    "redshift": ("GetClusterCredentials*",),
    "redshift-serverless": ("GetCredentials",),
    "cognito-identity": ("GetCredentialsForIdentity", "GetOpenIdToken*"),
    "sso": ("GetRoleCredentials",),
}

# The product's own purpose: reading secrets (and a random password that is no one's credential).
PRODUCT_OPERATIONS: dict[str, frozenset[str]] = {
    "secretsmanager": frozenset({"GetSecretValue", "BatchGetSecretValue", "GetRandomPassword"}),
}

# camelCase and PascalCase words: "authorizationToken" -> authorization, token; "APIKey" -> API, Key;
# "PresignedURL" -> Presigned, URL; "privateKeyBase64" -> private, Key, Base, 64.
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
# Tokens that carry no authority: pagination (NextToken, nextForwardToken, ContinuationToken, Marker ...),
# idempotency (ClientRequestToken), optimistic concurrency (wafv2 LockToken, waf ChangeToken, kinesisanalytics
# ConditionalToken), sequencing (logs uploadSequenceToken), identifiers of results, previews, feedback,
# registrations, and verification tokens published in DNS (ses).
_INERT_TOKEN_WORDS = frozenset(
    {
        "next", "continuation", "pagination", "page", "forward", "backward", "marker", "sync", "client",
        "request", "idempotency", "version", "cancel", "continue", "start", "end", "prev", "previous",
        "resume", "last", "first", "stop", "change", "lock", "conditional", "sequence", "upload", "result",
        "feedback", "verification", "registration", "preview",
    }
)  # fmt: skip
# Words before "Key" that make it key material rather than an identifier (KeyId, TagKey, PartitionKey).
_SECRET_KEY_WORDS = frozenset({"secret", "api", "access", "private", "signing", "hmac", "session", "shared", "mac"})
_PASSWORD_WORDS = frozenset({"password", "passwd", "passphrase", "passcode"})
# Words before "Code" that make it a secret to present rather than a status or an identifier (ErrorCode,
# CountryCode): ssm CreateActivation's ActivationCode registers any machine as a managed node, which then gets
# the activation's role credentials; snowball's UnlockCode; route53domains' AuthCode transfers a domain.
_SECRET_CODE_WORDS = frozenset(
    {
        "activation",
        "auth",
        "authorization",
        "unlock",
        "pairing",
        "claim",
        "enrollment",
        "recovery",
        "login",
        "otp",
        "mfa",
    }
)
# Trailing words that name the form of the value: TokenValue, privateKeyBase64, SecretString.
_VALUE_FORM_WORDS = frozenset({"value", "string", "base", "64", "pem", "blob", "text", "data", "material"})
_VALUE_TYPES = frozenset({"string", "blob"})
_CONTAINER_TYPES = frozenset({"structure", "list", "map", "string", "blob"})


def words(name: str) -> list[str]:
    """The lower-case words of a model name or enum value: ``authorizationToken`` -> ``["authorization",
    "token"]``, ``KAFKA_CLIENT_KEY_PASSWORD`` -> ``["kafka", "client", "key", "password"]``."""
    return [w.lower() for w in _WORD.findall(name)]


def credential_member(name: str, shape: Shape) -> str | None:
    """What the member ``name`` (of shape ``shape``) carries when its name says it is a credential
    (``"password"``, ``"token"``, ``"secret"``, ``"key"``, ``"credentials"``, ``"key pair"``,
    ``"pre-signed URL"``), or None. Only a shape that can carry the value counts (see the module docstring)."""
    return _credential_words(words(name), shape.type_name)


def _credential_words(w: list[str], kind: str) -> str | None:
    """:func:`credential_member` on the name's words ``w`` and the shape's type ``kind``."""
    while len(w) > 1 and w[-1] in _VALUE_FORM_WORDS:
        w = w[:-1]
    if not w:
        return None
    last, before = w[-1], w[:-1]
    if last in ("credentials", "credential") and kind in _CONTAINER_TYPES:
        return "credentials"
    if last == "pair" and before[-1:] == ["key"] and kind in _CONTAINER_TYPES:
        return "key pair"
    if kind == "structure" and w == ["access", "key"]:
        return "access key"
    if kind not in _VALUE_TYPES:
        return None
    if last in _PASSWORD_WORDS:
        return "password"
    if last == "token" and not _INERT_TOKEN_WORDS.intersection(before):
        return "token"
    if last == "secret":
        return "secret"
    if last == "key" and before and before[-1] in _SECRET_KEY_WORDS:
        return "key"
    if last == "code" and before and before[-1] in _SECRET_CODE_WORDS:
        return "code"
    if any(a == "private" and b == "key" for a, b in zip(w, w[1:], strict=False)):
        return "private key"
    if last in ("url", "urls", "uri") and ({"presigned", "signed", "authorized"} & set(before)):
        return "pre-signed URL"
    return None


def _hits(shape: Shape, path: str, seen: frozenset[str]) -> Iterator[tuple[str, str]]:
    """(path, what) for every credential member below ``shape``, depth first in model order; a shape already
    on the current path (a recursive shape) is not entered again."""
    if shape.name in seen:
        return
    seen = seen | {shape.name}
    if isinstance(shape, StructureShape):
        for name, member in shape.members.items():
            where = f"{path}.{name}" if path else name
            if member.metadata.get("sensitive"):
                yield where, "sensitive"
            elif name in CREDENTIAL_OUTPUT_MEMBERS:
                yield where, "named credential member"
            else:
                what = credential_member(name, member)
                if what is not None:
                    yield where, what
            yield from _hits(member, where, seen)
    elif isinstance(shape, ListShape):
        if shape.member.metadata.get("sensitive"):  # proton ListServiceInstanceOutputs: outputs[] of sensitive items
            yield f"{path}[]", "sensitive"
        yield from _hits(shape.member, f"{path}[]", seen)
    elif isinstance(shape, MapShape):
        if shape.key.metadata.get("sensitive"):
            yield f"{path}{{key}}", "sensitive"
        if shape.value.metadata.get("sensitive"):
            yield f"{path}{{}}", "sensitive"
        for key in (
            shape.key.metadata.get("enum") or ()
        ):  # glue ConnectionProperties: {"PASSWORD": ..., "USERNAME": ...}
            what = _credential_words(words(key), shape.value.type_name)
            if what is not None:
                yield f"{path}{{{key}}}", what
                break
        yield from _hits(shape.value, f"{path}{{}}", seen)


def credential_reason(model: ServiceModel, operation: str) -> str | None:
    """Why ``operation`` of ``model`` hands out credentials (``"authorizationData[].authorizationToken:
    token"``, ``"CREDENTIAL_ACTIONS"`` ...), or None when it does not or is one of :data:`PRODUCT_OPERATIONS`.

    Raises botocore's ``OperationNotFoundError`` for a name the model does not have."""
    service = model.service_name
    if operation in PRODUCT_OPERATIONS.get(service, ()):
        return None
    if any(fnmatch.fnmatchcase(operation, p) for p in CREDENTIAL_ACTIONS.get(service, ())):
        return "named in CREDENTIAL_ACTIONS"
    op_words = words(operation)
    if "presigned" in op_words or ("pre", "signed") in zip(op_words, op_words[1:], strict=False):
        return "makes a pre-signed URL"
    output = model.operation_model(operation).output_shape
    if output is None:
        return None
    for path, what in _hits(output, "", frozenset()):
        return f"{path}: {what}"
    return None


@functools.lru_cache(maxsize=64)
def _cached(model: ServiceModel) -> frozenset[str]:
    return frozenset(name for name in model.operation_names if credential_reason(model, name) is not None)


def credential_operations(model: ServiceModel) -> frozenset[str]:
    """The operations of ``model`` that hand out credentials (:func:`credential_reason`)."""
    return _cached(model)


@dataclass(frozen=True, slots=True)
class CredentialGuard:
    """Compiled once per service: ``denied`` are the credential operations ``allow_actions`` does not name."""

    denied: frozenset[str]

    @classmethod
    def compile(cls, model: ServiceModel, allow_actions: Iterable[str] | None) -> CredentialGuard:
        listed = frozenset(allow_actions or ())
        return cls(denied=credential_operations(model) - listed)

    def check(self, operation: Operation) -> None:
        """Raise AccessDenied for a credential operation not named in ``allow_actions``."""
        if operation.name in self.denied:
            raise errors.AccessDenied(
                f"{operation.name} hands out credentials; it is served only when policy.allow_actions "
                f"names it exactly (not through '*' or a pattern)"
            )
