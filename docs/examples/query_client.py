"""A legacy Query API client in the standard library only: what an app that speaks awsQuery needs to use the
proxy (docs/query-encoding.md). No signing, no SDK: the proxy signs.

    python3 docs/examples/query_client.py http://127.0.0.1:8977 demo/db-password

``QueryClient.call(action, params)`` flattens nested Python values into awsQuery parameters (lists as
``Name.member.N``, maps as ``Name.entry.N.key`` / ``.value``, structures as ``Name.Member``, booleans as
``true``/``false``), sends them as a form POST and returns the ``<ActionResult>`` element; an
``<ErrorResponse>`` raises :class:`QueryError` with the error's ``Code``, ``Message`` and HTTP status.
"""

from __future__ import annotations

import base64
import datetime
import sys
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree
from typing import Any


class QueryError(Exception):
    """An ``<ErrorResponse>``: ``code`` (e.g. ``ResourceNotFoundException``), ``message``, ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def flatten(value: Any, name: str, out: list[tuple[str, str]]) -> None:
    """Append the awsQuery parameters for ``value`` under ``name``: a dict with a ``"map"`` key is a map, another
    dict a structure, a list or tuple a list."""
    if isinstance(value, dict) and set(value) == {"map"}:
        for i, (key, item) in enumerate(value["map"].items(), 1):
            flatten(key, f"{name}.entry.{i}.key", out)
            flatten(item, f"{name}.entry.{i}.value", out)
    elif isinstance(value, dict):
        for member, item in value.items():
            flatten(item, f"{name}.{member}", out)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value, 1):
            flatten(item, f"{name}.member.{i}", out)
    elif isinstance(value, bool):
        out.append((name, "true" if value else "false"))
    elif isinstance(value, bytes):
        out.append((name, base64.b64encode(value).decode("ascii")))
    elif isinstance(value, datetime.datetime):
        out.append((name, value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")))  # noqa: UP017 (3.8+)
    else:
        out.append((name, str(value)))


class QueryClient:
    """One service at ``endpoint`` (the proxy's listener), API version ``version``."""

    def __init__(self, endpoint: str, version: str = "2017-10-17", timeout: float = 30) -> None:
        self.endpoint, self.version, self.timeout = endpoint.rstrip("/") + "/", version, timeout

    def call(self, action: str, params: dict[str, Any] | None = None) -> ElementTree.Element:
        """POST ``Action=<action>&Version=...&<params>`` and return the ``<actionResult>`` element."""
        pairs = [("Action", action), ("Version", self.version)]
        for name, value in (params or {}).items():
            flatten(value, name, pairs)
        body = urllib.parse.urlencode(pairs).encode()  # space as "+", "/" as %2F, as botocore writes it
        request = urllib.request.Request(
            self.endpoint, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                document = ElementTree.fromstring(response.read())
        except urllib.error.HTTPError as error:
            root = ElementTree.fromstring(error.read())
            raise QueryError(error.code, text(root, "Error/Code"), text(root, "Error/Message")) from None
        result = find(document, f"{action}Result")
        if result is None:
            raise QueryError(502, "MissingResult", f"the answer has no <{action}Result>")
        return result


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def find(element: ElementTree.Element, path: str) -> ElementTree.Element | None:
    """``path`` (``A/B``) below ``element``, element names compared without their XML namespace."""
    current: ElementTree.Element | None = element
    for step in path.split("/"):
        if current is None:
            return None
        current = next((child for child in current if _local(child.tag) == step), None)
    return current


def text(element: ElementTree.Element, path: str) -> str:
    found = find(element, path)
    return (found.text or "") if found is not None else ""


def members(element: ElementTree.Element, path: str) -> list[ElementTree.Element]:
    """The ``<member>`` items of the list at ``path``."""
    found = find(element, path)
    return [child for child in found if _local(child.tag) == "member"] if found is not None else []


def main() -> None:
    endpoint, secret_id = sys.argv[1], sys.argv[2]
    result = QueryClient(endpoint).call("GetSecretValue", {"SecretId": secret_id})
    print(text(result, "SecretString"))


if __name__ == "__main__":
    main()
