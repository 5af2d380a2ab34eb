"""Listings under ``policy.allow_secrets``: answers that depend on no secret the caller may not see
(docs/security.md, "Listings"; issue 13, section 3).

A listing is an operation that names no secret and pages through secrets: ``ListSecrets``,
``BatchGetSecretValue`` by ``Filters`` (found in botocore's model, not by name: :func:`listing_of`). Filtering
each upstream page on its way through, as the proxy once did, leaks: with ``MaxResults=1`` and a ``name``
filter holding an allowed name and a guessed prefix, the upstream's page length and its ``NextToken`` show
whether a hidden secret matches the guess, and denied names come out prefix by prefix. So, with
``allow_secrets`` set, the proxy pages the upstream itself:

1. **Push the allow-list into the upstream filter** where the patterns allow it (:func:`push_down`): every
   pattern's literal start is a ``name`` prefix (:func:`proxy.policy.name_prefix`), intersected with the
   caller's own ``name`` filter. With patterns of the form ``prefix*`` the upstream then returns allowed
   secrets only, and nothing below can depend on a hidden one.
2. **Page upstream inside the proxy** (:meth:`Listings.answer`), always asking for the model's largest page,
   keeping the entries ``allow_secrets`` allows, until the caller's page (``MaxResults``, else the model's
   maximum) is full or the upstream listing ends.
3. **Hand out the proxy's own continuation token** (:class:`PageTokens`): where to resume upstream (the
   upstream's token and how many entries of that page were consumed), sealed with AES-GCM-SIV under a key
   made at start-up by the parent before ``--workers`` forks (so any worker opens it), bound to the request
   (operation, every input member but ``NextToken``, the policy, the upstream endpoint) as associated data,
   and padded to a fixed size, so it reveals nothing of the upstream position (moto's tokens are offsets that
   would count hidden secrets). A forged, altered, truncated or replayed-elsewhere token is the service's own
   ``InvalidNextTokenException``.

When ``NextToken`` is present, and why that hides what it must: a full page always gets one, even when no
allowed entry is left (the next page is then empty, which AWS's contract allows: "might return fewer results
than the maximum even when there are more results available"); a page that is not full gets none exactly
when the upstream listing ended. Both depend only on the allowed entries, in the upstream's order. Looking
ahead to drop the token after the last full page would not: "the upstream has more" depends on hidden
entries after the last allowed one, which is the original oracle.

**The bound** ``limits.max_upstream_pages``: a client request makes at most that many upstream calls. When
the proxy stops early (the bound, or an upstream failure after the first call), it answers the entries it has
and a token that resumes where it stopped; a failure of the first call is the upstream's error, as before.
Within the bound every answer is the same as if the hidden secrets did not exist. At the bound, a page shorter
than ``MaxResults`` with a token tells the caller that at least ``max_upstream_pages`` x (upstream page size)
- ``MaxResults`` entries it may not see lie in the range scanned; no name, and never from fewer. No proxy that
bounds its work per request can do better (it must scan the hidden entries to reach the next allowed one);
with ``prefix*`` patterns the upstream returns no hidden entry at all, and the bound is reached only by
allowed ones. docs/security.md says what an operator can do about it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.model import ListShape, OperationModel, StructureShape

from . import errors
from .models import Operation, UpstreamResponse
from .shapes import OUTPUT_SECRET_ID_SHAPES

log = logging.getLogger("proxy.listing")

Keep = Callable[[str], bool]
Call = Callable[[dict[str, Any]], Awaitable[UpstreamResponse]]

AWS_JSON_TYPE = "application/x-amz-json-1.1"
_NAME = "name"
_MAX_FILTERS = 10  # FiltersListType's max in botocore's model
_MAX_VALUES = 10  # FilterValuesStringList's max


@dataclass(frozen=True, slots=True)
class Listing:
    """How one listing operation pages: the output lists that hold its entries, in the order the upstream
    writes them, with their item shapes, and the model's largest ``MaxResults`` (the upstream page size)."""

    items: tuple[tuple[str, StructureShape], ...]
    page_max: int


def _names_secrets(shape: StructureShape) -> bool:
    return any(m.name in OUTPUT_SECRET_ID_SHAPES for m in shape.members.values())


def listing_of(op: OperationModel) -> Listing | None:
    """The :class:`Listing` of ``op`` when its model pages (``NextToken`` and ``MaxResults`` in, ``NextToken``
    out) through lists of structures that name secrets; None for any other operation."""
    shape_in, shape_out = op.input_shape, op.output_shape
    if shape_in is None or shape_out is None or not isinstance(shape_out, StructureShape):
        return None
    members = shape_in.members
    if "NextToken" not in members or "MaxResults" not in members or "NextToken" not in shape_out.members:
        return None
    items = tuple(
        (name, m.member)
        for name, m in shape_out.members.items()
        if isinstance(m, ListShape) and isinstance(m.member, StructureShape) and _names_secrets(m.member)
    )
    page_max = members["MaxResults"].metadata.get("max")
    if not items or not isinstance(page_max, int):
        return None
    return Listing(items, page_max)


def visible(shape: StructureShape, item: Any, keep: Keep) -> bool:
    """Whether the caller may see a list entry: it names at least one secret ``keep`` allows (the rule of
    :func:`proxy.translate.visible_output`)."""
    if not isinstance(item, dict):
        return False
    named = (item[n] for n, m in shape.members.items() if m.name in OUTPUT_SECRET_ID_SHAPES and n in item)
    return any(isinstance(v, str) and keep(v) for v in named)


class NothingVisible(Exception):
    """The caller's filters and ``allow_secrets`` together match no name: the listing is empty."""


def push_down(
    filters: Sequence[dict[str, Any]] | None, prefixes: tuple[str, ...] | None
) -> list[dict[str, Any]] | None:
    """The caller's ``Filters`` with ``allow_secrets`` pushed in as a ``name`` filter (ANDed with the others,
    its values ORed, a prefix match): ``prefixes`` (:attr:`proxy.policy.Policy.name_prefixes`) alone when the
    caller gave no ``name`` filter, else each caller value that lies within a prefix, and each prefix that
    lies within a caller value. Returns the caller's filters unchanged (None stays None) when nothing can be
    pushed: no prefixes, a ``name`` filter with a negation (``!``) or given twice, or more values or filters
    than the model allows. Raises NothingVisible when no name can match both.

    The answer is filtered by ``allow_secrets`` afterwards in every case; this only keeps hidden secrets out
    of the upstream's pages."""
    if prefixes is None:
        return list(filters) if filters is not None else None
    given = list(filters or ())
    names = [f for f in given if f.get("Key") == _NAME]
    if not names:
        if not prefixes:
            raise NothingVisible
        if len(given) >= _MAX_FILTERS or len(prefixes) > _MAX_VALUES:
            return list(filters) if filters is not None else None
        return [*given, {"Key": _NAME, "Values": list(prefixes)}]
    values = names[0].get("Values") or []
    if len(names) > 1 or any(not isinstance(v, str) or v.startswith("!") for v in values):
        return given
    within = sorted({max(v, p, key=len) for v in values for p in prefixes if v.startswith(p) or p.startswith(v)})
    if not within:
        raise NothingVisible
    if len(within) > _MAX_VALUES:
        return given
    return [{"Key": _NAME, "Values": within} if f is names[0] else f for f in given]


# ---------------------------------------------------------------------------------------------------------
# the proxy's continuation token

_VERSION = b"\x01"
_NONCE_BYTES = 12
_TAG_BYTES = 16
# Padded plaintext sizes: every token of a bucket has the same length. The largest keeps a token within
# NextTokenType's 4096 characters: base64 of 1 + 12 + 2944 + 16 bytes is 3964.
_BUCKETS = (512, 1536, 2944)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a listing resumes upstream: the upstream's ``NextToken`` (None: the first page), how many entries
    of that page were consumed, or the end of the listing."""

    upstream: str | None = None
    skip: int = 0
    ended: bool = False


class PageTokens:
    """Seals and opens :class:`Position`\\ s as ``NextToken`` strings (AES-GCM-SIV, ``cryptography``'s AEAD, under
    ``key``: 32 bytes made once per start by the parent process, before any fork)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._aead: Any = None  # cryptography is imported on the first listing, not at start-up

    def _cipher(self) -> Any:
        if self._aead is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

            self._aead = AESGCMSIV(self._key)
        return self._aead

    def seal(self, position: Position, scope: bytes) -> str:
        """``position`` as a token that only a request of the same ``scope`` opens. Raises BadGateway when the
        upstream's own token is too long to carry within NextTokenType's 4096 characters."""
        plain = json.dumps({"u": position.upstream, "s": position.skip, "e": position.ended}).encode()
        size = next((b for b in _BUCKETS if len(plain) <= b), None)
        if size is None:
            raise errors.BadGateway("the upstream's NextToken is too long to carry in the proxy's own")
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._cipher().encrypt(nonce, plain.ljust(size), scope)
        return base64.urlsafe_b64encode(_VERSION + nonce + sealed).decode("ascii").rstrip("=")

    def open(self, token: str, scope: bytes) -> Position:
        """The position a token holds. Raises InvalidNextToken for anything but a token this process's key
        sealed for ``scope`` (forged, altered, cut, made for another listing, or before a restart)."""
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            if not raw.startswith(_VERSION) or len(raw) < 1 + _NONCE_BYTES + _TAG_BYTES:
                raise ValueError("not a token of this version")
            nonce, sealed = raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :]
            doc = json.loads(self._cipher().decrypt(nonce, sealed, scope))
            upstream, skip, ended = doc["u"], doc["s"], doc["e"]
            if not (upstream is None or isinstance(upstream, str)) or type(skip) is not int or type(ended) is not bool:
                raise ValueError("not a position")
        except (ValueError, TypeError, KeyError, InvalidTag):
            raise errors.InvalidNextToken(
                "the NextToken is not one this proxy handed out for this request (tokens are bound to the "
                "operation, its filters and MaxResults, and do not survive a restart); start the listing again "
                "without NextToken"
            ) from None
        return Position(upstream, skip, ended)


# ---------------------------------------------------------------------------------------------------------
# paging


class Listings:
    """The listing operations of one service and how to page them; built once at start-up.

    ``prefixes`` is :attr:`proxy.policy.Policy.name_prefixes`; ``scope`` binds tokens to this listener (its
    policy and upstream endpoint); ``max_pages`` is ``limits.max_upstream_pages``."""

    def __init__(
        self,
        operations: dict[str, Listing],
        tokens: PageTokens,
        prefixes: tuple[str, ...] | None,
        scope: bytes,
        max_pages: int,
    ) -> None:
        self._operations = operations
        self._tokens = tokens
        self._prefixes = prefixes
        self._scope = scope
        self.max_pages = max_pages

    @classmethod
    def of_model(
        cls,
        ops: dict[str, OperationModel],
        tokens: PageTokens,
        prefixes: tuple[str, ...] | None,
        scope: bytes,
        max_pages: int,
    ) -> Listings:
        found = {name: listing for name, op in ops.items() if (listing := listing_of(op)) is not None}
        return cls(found, tokens, prefixes, scope, max_pages)

    def pages(self, operation: Operation) -> Listing | None:
        """The listing ``operation`` is, when the proxy pages it itself: it names no secret and its model pages
        through secrets."""
        if operation.secret_ids:
            return None
        return self._operations.get(operation.name)

    def _request_scope(self, operation: Operation, data: dict[str, Any]) -> bytes:
        canonical = json.dumps([operation.name, data], sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(self._scope + b"\x00" + canonical.encode()).digest()

    async def answer(self, listing: Listing, operation: Operation, keep: Keep, call: Call) -> UpstreamResponse:
        """One page of ``operation`` for the caller, from upstream calls made with ``call(input)`` (signed,
        with retries): a 200 JSON 1.1 answer holding only entries ``keep`` allows and the proxy's own
        ``NextToken``, or the first call's error answer unchanged. Raises InvalidNextToken, and what ``call``
        raises on the first call."""
        data = dict(operation.input)
        token = data.pop("NextToken", None)
        scope = self._request_scope(operation, data)
        wanted = data.pop("MaxResults", None) or listing.page_max
        position = self._tokens.open(token, scope) if token is not None else Position()
        found: dict[str, list[Any]] = {name: [] for name, _ in listing.items}
        try:
            filters = push_down(data.get("Filters"), self._prefixes)
        except NothingVisible:
            return self._page(found, None, scope, ())
        if filters is not None:
            data["Filters"] = filters
        headers: tuple[tuple[str, str], ...] = ()
        count, calls = 0, 0
        while not position.ended:
            if calls == self.max_pages:
                log.info("listing page stopped early", extra={"reason": "limits.max_upstream_pages", "calls": calls})
                return self._page(found, position, scope, headers)
            request = {**data, "MaxResults": listing.page_max}
            if position.upstream is not None:
                request["NextToken"] = position.upstream
            calls += 1
            try:
                response = await call(request)
                doc = _json_object(response.body) if response.status < 300 else None
            except errors.ProxyError:  # unreachable, timed out, a body that is not JSON ...
                if calls == 1:
                    raise
                log.info("listing page stopped early", extra={"reason": "upstream failure", "calls": calls})
                return self._page(found, position, scope, headers)
            if doc is None:  # an error answer
                if calls == 1:
                    return response
                log.info("listing page stopped early", extra={"reason": "upstream error", "calls": calls})
                return self._page(found, position, scope, headers)
            headers = response.headers
            entries = [(name, item) for name, _ in listing.items for item in _list(doc.get(name))]
            upstream = doc.get("NextToken")
            after = Position(upstream, 0) if isinstance(upstream, str) and upstream else Position(ended=True)
            shapes = dict(listing.items)
            for index in range(position.skip, len(entries)):
                name, item = entries[index]
                if not visible(shapes[name], item, keep):
                    continue
                found[name].append(item)
                count += 1
                if count == wanted:  # full: a token, whatever follows (see the module docstring)
                    rest = Position(position.upstream, index + 1) if index + 1 < len(entries) else after
                    return self._page(found, rest, scope, headers)
            position = after
        return self._page(found, None, scope, headers)

    def _page(
        self,
        found: dict[str, list[Any]],
        position: Position | None,
        scope: bytes,
        headers: tuple[tuple[str, str], ...],
    ) -> UpstreamResponse:
        doc: dict[str, Any] = dict(found)
        if position is not None:
            doc["NextToken"] = self._tokens.seal(position, scope)
        kept = tuple((k, v) for k, v in headers if k.lower() != "content-type")
        body = json.dumps(doc, separators=(",", ":")).encode()
        return UpstreamResponse(200, (*kept, ("Content-Type", AWS_JSON_TYPE)), body)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body) if body.strip() else {}
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise errors.BadGateway("the upstream answered a listing with a body that is not a JSON object")
    return doc


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
