"""The operator's policy: which operations, which secrets. Compiled once at load, applied per request.

Source: docs/interface.md, "Policy". ``allow_actions`` null means the read-only operations (``Get*``,
``Describe*``, ``List*``, ``BatchGet*``); ``["*"]`` all; else a list of operation names or glob patterns.
``allow_secrets`` null means any secret; else glob patterns (``*`` also crosses ``/``), matched against each
secret id as given and, for an ARN, against the secret name inside it without AWS's random
6-character suffix. A denial is AccessDenied and happens before any upstream call.

Secrets selected by filter, not by name. ListSecrets (with or without ``Filters``) and BatchGetSecretValue
with ``Filters`` name no secret in their input, so ``allow_actions`` alone lets them through; what they
return is filtered instead: with ``allow_secrets`` set, :attr:`Policy.answer_filter` decides which entries
(``SecretList``, ``SecretValues``, ``Errors``, by their ``ARN``/``Name``/``SecretId``) the caller sees. The
choice is filtering, not denial, because docs/interface.md, "Policy" governs operations that name no secret
by ``allow_actions`` alone, and an app allowed ``prod/app/*`` may list those. Filtering one upstream page at
a time would make the page's length and its ``NextToken`` depend on the hidden secrets (an oracle: issue
13), so :mod:`proxy.listing` pages upstream itself and hands out its own token; :attr:`Policy.name_prefixes`
lets it ask the upstream for the allowed names only, where the patterns allow. The upstream still reads
what the pushed-down filter does not exclude (the role's IAM policy is the bound on what AWS reads). An
answer that is itself about a secret outside ``allow_secrets`` (a partial ARN that named another secret) is
AccessDenied.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import errors
from .config import ConfigError, PolicyConfig
from .models import Operation
from .shapes import is_read_operation

# The service whose read-only operations are the default of ``allow_actions``.
DEFAULT_POLICY_SERVICE = "secretsmanager"
# arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-AbCdEf  (any partition)
_SECRET_ARN = re.compile(r"^arn:[\w-]+:secretsmanager:[\w-]*:\d*:secret:(?P<name>.+?)(?:-[A-Za-z0-9]{6})?$")


def secret_names(secret_id: str) -> tuple[str, ...]:
    """The values a pattern is matched against: the id itself, and for an ARN the name inside it
    without the 6-character suffix."""
    m = _SECRET_ARN.match(secret_id)
    if m is None:
        return (secret_id,)
    return (secret_id, m["name"])


# Secrets Manager's FilterValueStringType (botocore's model), without the leading "!" of a negation.
_FILTER_VALUE = re.compile(r"[a-zA-Z0-9 :_@/+=.-]{1,512}")
_GLOB = re.compile(r"[*?\[]")


def name_prefix(pattern: str) -> str | None:
    """The literal start of an ``allow_secrets`` pattern, as a ``name`` filter value of ListSecrets (a prefix
    match, case-sensitive: the ``Filter`` shape's documentation in botocore's model): every secret *name* the
    pattern matches starts with it. None when no such filter value can stand for the pattern: a pattern
    that starts with a wildcard, an ARN pattern (matched against ARNs, not names), or characters a filter
    value may not hold."""
    literal = _GLOB.split(pattern, 1)[0]
    if pattern.startswith("arn:") or not _FILTER_VALUE.fullmatch(literal):
        return None
    return literal


def _compile(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")


@dataclass(frozen=True, slots=True)
class Policy:
    """A compiled policy. ``actions``/``secrets`` are None for "default"/"any"."""

    all_actions: bool
    actions: re.Pattern[str] | None
    secrets: re.Pattern[str] | None
    # the allow_secrets patterns as name prefixes (:func:`name_prefix`); None when one of them has none
    name_prefixes: tuple[str, ...] | None = None

    @classmethod
    def compile(
        cls,
        cfg: PolicyConfig,
        operation_names: Iterable[str],
        key: str = "policy",
        service: str = DEFAULT_POLICY_SERVICE,
    ) -> Policy:
        """Compile ``cfg`` against the operations of ``service`` (a botocore service name). Raises ConfigError
        for a name that matches no operation (a typo would silently deny), and for a null ``allow_actions``
        with any service but Secrets Manager: the read-only default is a Secrets Manager rule (elsewhere a
        ``Get*`` can hand out a registry password or a database token; issue 13)."""
        names = list(operation_names)
        actions: re.Pattern[str] | None = None
        all_actions = False
        if cfg.allow_actions is None and service != DEFAULT_POLICY_SERVICE:
            raise ConfigError(
                f"{key}.allow_actions: required for {service} (the read-only default, Get*, Describe*, List*, "
                f"BatchGet*, applies to {DEFAULT_POLICY_SERVICE} only); list the operations the app may call"
            )
        if cfg.allow_actions is not None:
            if "*" in cfg.allow_actions:
                all_actions = True
            else:
                for i, pattern in enumerate(cfg.allow_actions):
                    if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                        raise ConfigError(f"{key}.allow_actions[{i}]: {pattern!r} matches no operation of the service")
                actions = _compile(cfg.allow_actions)
        secrets = _compile(cfg.allow_secrets) if cfg.allow_secrets is not None else None
        prefixes = [name_prefix(p) for p in cfg.allow_secrets or ()]
        name_prefixes = None
        if cfg.allow_secrets is not None and all(p is not None for p in prefixes):
            # a prefix that starts with another says nothing more: keep the shortest ones
            unique = sorted({p for p in prefixes if p is not None})
            name_prefixes = tuple(p for p in unique if not any(p != q and p.startswith(q) for q in unique))
        return cls(all_actions=all_actions, actions=actions, secrets=secrets, name_prefixes=name_prefixes)

    def action_allowed(self, name: str) -> bool:
        if self.all_actions:
            return True
        if self.actions is None:
            return is_read_operation(name)
        return self.actions.fullmatch(name) is not None

    def secret_allowed(self, secret_id: str) -> bool:
        if self.secrets is None:
            return True
        return any(self.secrets.fullmatch(v) for v in secret_names(secret_id))

    @property
    def answer_filter(self) -> Callable[[str], bool] | None:
        """The test an answer's secrets must pass (:func:`proxy.translate.visible_output`); None when
        ``allow_secrets`` is null (any secret)."""
        return self.secret_allowed if self.secrets is not None else None

    def check(self, operation: Operation) -> None:
        """Raise AccessDenied unless the operation and every secret it names are allowed."""
        if not self.action_allowed(operation.name):
            raise errors.AccessDenied(f"{operation.name} is not allowed by policy.allow_actions")
        for secret_id in operation.secret_ids:
            if not self.secret_allowed(secret_id):
                raise errors.AccessDenied(f"the secret {secret_id!r} is not allowed by policy.allow_secrets")
