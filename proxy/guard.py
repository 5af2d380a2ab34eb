"""Operations that hand out credentials: denied unless ``policy.allow_actions`` names them (docs/interface.md,
"Policy").

The proxy exists so that the app never holds a key. A pass-through to STS or IAM would undo that with one
``AssumeRole`` or ``CreateAccessKey``; so would Secrets Manager's neighbours (``cognito-identity``
``GetCredentialsForIdentity``, ``redshift`` ``GetClusterCredentials``). Which operations do is data, from two
sources combined at load:

* :data:`CREDENTIAL_OUTPUT_MEMBERS`: an operation whose output shape (anywhere inside it) has a member of
  one of these names hands out a credential. This follows botocore's model, so an operation AWS adds later
  (sts ``GetDelegatedAccessToken``) is caught without a code change.
* :data:`CREDENTIAL_ACTIONS`: per service, names (glob patterns) the model cannot show, e.g. because the
  credential is written into the request's side effects rather than returned.

Such an operation is allowed only when ``allow_actions`` lists its exact name: ``"*"`` and patterns such as
``Get*`` never enable it (``GetSessionToken`` is a ``Get*``, and the default read-only set would otherwise
hand out session tokens).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from botocore.model import ListShape, MapShape, ServiceModel, Shape, StructureShape

from . import errors
from .models import Operation

# Output members that carry a credential, a password or a bearer token.
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


def hands_out_credentials(shape: Shape | None, seen: frozenset[str] = frozenset()) -> bool:
    """True when ``shape`` (an output shape) has, at any depth, a member named in
    :data:`CREDENTIAL_OUTPUT_MEMBERS`. Recursive shapes are walked once."""
    if shape is None or shape.name in seen:
        return False
    seen = seen | {shape.name}
    if isinstance(shape, StructureShape):
        return any(
            name in CREDENTIAL_OUTPUT_MEMBERS or hands_out_credentials(member, seen)
            for name, member in shape.members.items()
        )
    if isinstance(shape, ListShape):
        return hands_out_credentials(shape.member, seen)
    if isinstance(shape, MapShape):
        return hands_out_credentials(shape.value, seen)
    return False


def credential_operations(model: ServiceModel) -> frozenset[str]:
    """The operations of ``model`` that hand out credentials (both sources above)."""
    patterns = CREDENTIAL_ACTIONS.get(model.service_name, ())
    names = set()
    for name in model.operation_names:
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            names.add(name)
        elif hands_out_credentials(model.operation_model(name).output_shape):
            names.add(name)
    return frozenset(names)


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
