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


def partial_reading(secret_id: str) -> str | None:
    """The other secret an ARN may stand for. ``arn:...:secret:NAME-AbCdEf`` reads as the full ARN of the secret
    ``NAME``; when no secret has that ARN, it may also be read as a partial ARN of the secret named
    ``NAME-AbCdEf`` (Secrets Manager API reference, ``SecretId``: a name ending in a hyphen and six characters
    "can cause unexpected results"; moto resolves it so). Returns that second name, everything after
    ``:secret:``, when the two readings differ; None for an id that is not a secret ARN or whose name has no
    such ending."""
    m = _SECRET_ARN.match(secret_id)
    if m is None:
        return None
    tail = secret_id[m.start("name") :]
    return tail if tail != m["name"] else None


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
    # the patterns that end in "*" (they match an ARN with anything appended), and those without wildcards
    open_ended: re.Pattern[str] | None = None
    literal: frozenset[str] = frozenset()

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
        patterns = cfg.allow_secrets or ()
        open_ended = _compile(p for p in patterns if p.endswith("*")) if cfg.allow_secrets is not None else None
        literal = frozenset(p for p in patterns if not _GLOB.search(p))
        return cls(
            all_actions=all_actions,
            actions=actions,
            secrets=secrets,
            name_prefixes=name_prefixes,
            open_ended=open_ended,
            literal=literal,
        )

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

    def unresolved(self, secret_id: str) -> str | None:
        """The partial-ARN reading of an allowed ``secret_id`` (:func:`partial_reading`) when ``allow_secrets``
        does not cover it, else None. It is covered when a pattern matches that name, when the id is one of the
        patterns written out without wildcards (the operator named that ARN), or when a pattern ending in
        ``*`` matches the id (it then matches the ARN of the secret so named too, whatever its suffix)."""
        if self.secrets is None:
            return None
        other = partial_reading(secret_id)
        if other is None or self.secrets.fullmatch(other) or secret_id in self.literal:
            return None
        if self.open_ended is not None and self.open_ended.fullmatch(secret_id):
            return None
        return other

    def ambiguous(self, operation: Operation) -> bool:
        """Whether a secret id of ``operation`` may name a secret ``allow_secrets`` hides (:meth:`unresolved`):
        its answer must then look the same whether that secret exists or not."""
        return any(self.unresolved(secret_id) is not None for secret_id in operation.secret_ids)

    def check(self, operation: Operation) -> None:
        """Raise AccessDenied unless the operation and every secret it names are allowed.

        An ARN that AWS may also read as a partial ARN of a secret outside ``allow_secrets`` (:meth:`unresolved`)
        is allowed only in a read whose answer names its secret (``Operation.checked_on_answer``): that answer is
        checked, and one about the hidden secret is answered as if it did not exist (SecretNotFound). Any other
        operation (a write, a batch) could reach the hidden secret unseen, so it is refused here, before any
        upstream call: name the secret by its name, or allow the longer name too."""
        if not self.action_allowed(operation.name):
            raise errors.AccessDenied(f"{operation.name} is not allowed by policy.allow_actions")
        for secret_id in operation.secret_ids:
            if not self.secret_allowed(secret_id):
                raise errors.AccessDenied(f"the secret {secret_id!r} is not allowed by policy.allow_secrets")
        if operation.checked_on_answer:
            return
        for secret_id in operation.secret_ids:
            other = self.unresolved(secret_id)
            if other is not None:
                raise errors.AccessDenied(
                    f"the secret {secret_id!r} may also be read by AWS as a partial ARN of {other!r}, which "
                    f"policy.allow_secrets does not allow, and {operation.name} cannot be checked on its answer; "
                    "name the secret by its name"
                )
