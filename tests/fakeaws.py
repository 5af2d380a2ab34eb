"""Fake AWS parts for the credential tests: real HTTP servers on loopback, run with ``ServerThread``.

- :class:`FakeSTS` (TLS): AssumeRole (SigV4 verified with botocore against the key ring) and
  AssumeRoleWithWebIdentity (the token checked against the accepted set), answering in STS's XML; it issues
  keys with a chosen lifetime under the fake clock (:class:`tests.clocks.ManualClock`), counts calls, and can fail or stall.
- :class:`FakeSecretsManager` (TLS): the upstream. It recomputes every SigV4 signature with botocore's
  ``SigV4Auth`` over the request as received, rejects keys the ring says are unknown, revoked or expired (400
  JSON, as Secrets Manager does), refuses a signing time more than 5 minutes from its own clock (which may be
  skewed) and answers GetSecretValue.
- :class:`FakeContainerCredentials` (HTTP, as the EKS Pod Identity agent): the credentials endpoint behind
  ``AWS_CONTAINER_CREDENTIALS_FULL_URI``, checking the ``Authorization`` token.
- :class:`FakeIMDS` (HTTP): instance metadata, IMDSv2, reached through ``AWS_EC2_METADATA_SERVICE_ENDPOINT``.

They share a :class:`KeyRing`: every key any of them issued, its token, its expiry by the fake clock.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import hmac
import itertools
import json
import re
import secrets
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.clocks import ManualClock
from tests.support import merged_config, poll

ACCOUNT = "123456789012"
STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
SECRET_VALUE = "s3cret-from-the-fake-upstream"


@dataclass
class Key:
    access_key: str
    secret_key: str
    token: str | None
    expiry: float | None
    origin: str
    revoked: bool = False


class KeyRing:
    """Every key the fakes know: static user keys (``AKIA...``) and issued temporary ones (``ASIA...``)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self._keys: dict[str, Key] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):016d}"

    def static(self) -> Key:
        with self._lock:
            key = Key(self._new_id("AKIA"), secrets.token_urlsafe(30), None, None, "static")
            self._keys[key.access_key] = key
            return key

    def issue(self, lifetime: float, origin: str) -> Key:
        with self._lock:
            expiry = float(int(self.clock() + lifetime))
            key = Key(self._new_id("ASIA"), secrets.token_urlsafe(30), secrets.token_urlsafe(60), expiry, origin)
            self._keys[key.access_key] = key
            return key

    def get(self, access_key: str) -> Key | None:
        return self._keys.get(access_key)

    def revoke(self, access_key: str) -> None:
        self._keys[access_key].revoked = True

    def refusal(self, access_key: str, token: str | None) -> str | None:
        """None when the key may sign now; ``"invalid"`` (unknown, wrong token, revoked) or ``"expired"``."""
        key = self.get(access_key)
        if key is None or key.revoked or (key.token is not None and token != key.token):
            return "invalid"
        if key.expiry is not None and self.clock() >= key.expiry:
            return "expired"
        return None


def iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r" ?SignedHeaders=(?P<signed>[a-z0-9;-]+), ?Signature=(?P<signature>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class SigV4Claim:
    """What an Authorization header claims; ``valid(secret, token)`` recomputes the signature with botocore."""

    access_key: str
    region: str
    service: str
    signed_headers: str
    signature: str
    amz_date: str
    token: str | None
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes

    def valid(self, secret_key: str) -> bool:
        names = self.signed_headers.split(";")
        if any(n not in self.headers for n in names):
            return False
        request = AWSRequest(
            method=self.method, url=self.url, headers={n: self.headers[n] for n in names}, data=self.body
        )
        request.context["timestamp"] = self.amz_date
        auth = SigV4Auth(Credentials(self.access_key, secret_key, self.token), self.service, self.region)
        if auth.signed_headers(auth.headers_to_sign(request)) != self.signed_headers:
            return False
        string_to_sign = auth.string_to_sign(request, auth.canonical_request(request))
        return hmac.compare_digest(auth.signature(string_to_sign, request), self.signature)


def sigv4_claim(request: web.Request, body: bytes) -> SigV4Claim | None:
    m = _AUTHORIZATION.match(request.headers.get("Authorization", ""))
    amz_date = request.headers.get("X-Amz-Date")
    if m is None or amz_date is None:
        return None
    return SigV4Claim(
        access_key=m["key"],
        region=m["region"],
        service=m["service"],
        signed_headers=m["signed"],
        signature=m["signature"],
        amz_date=amz_date,
        token=request.headers.get("X-Amz-Security-Token"),
        method=request.method,
        url=f"https://{request.headers.get('Host', '')}{request.raw_path}",
        headers={k.lower(): v for k, v in request.headers.items()},
        body=body,
    )


def amz_epoch(amz_date: str) -> float:
    return datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC).timestamp()


class Gate:
    """Open by default; while closed, handlers wait (in a worker thread, at most 30 s) until it opens."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._event.set()

    def close(self) -> None:
        self._event.clear()

    def open(self) -> None:
        self._event.set()

    async def passage(self) -> None:
        if not self._event.is_set():
            await asyncio.to_thread(self._event.wait, 30)


# ---------------------------------------------------------------------------------------------------------
# STS


@dataclass
class StsCall:
    action: str
    params: dict[str, str]
    signer: str | None = None
    issued: Key | None = None
    error: str | None = None


OUTAGE = (503, "ServiceUnavailable", "STS is unavailable (test outage)")
DENIED = (403, "AccessDenied", "User is not authorized to perform: sts:AssumeRole on the role (test)")


class FakeSTS:
    """STS over the key ring. Settings a test may change at any time:

    ``lifetimes`` (seconds by action; else the request's DurationSeconds, default 3600), ``failure`` (status,
    code, message that every call answers, e.g. :data:`OUTAGE`), ``gate`` (close it to stall every call),
    ``web_identity_tokens`` (the accepted tokens; None: any).
    """

    def __init__(self, ring: KeyRing, region: str = "us-east-1") -> None:
        self.ring = ring
        self.region = region
        self.lifetimes: dict[str, float] = {}
        self.failure: tuple[int, str, str] | None = None
        self.gate = Gate()
        self.web_identity_tokens: set[str] | None = None
        self.calls: list[StsCall] = []
        self.waiting = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self._handle)
        return app

    def issued(self, action: str | None = None) -> list[StsCall]:
        return [c for c in self.calls if c.issued is not None and (action is None or c.action == action)]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        params = dict(urllib.parse.parse_qsl(body.decode()))
        call = StsCall(params.get("Action", ""), params)
        self.calls.append(call)
        self.waiting += 1
        try:
            await self.gate.passage()
        finally:
            self.waiting -= 1
        if self.failure is not None:
            return self._error(call, *self.failure)
        if call.action == "AssumeRole":
            claim = sigv4_claim(request, body)
            if claim is None:
                return self._error(call, 400, "MissingAuthenticationToken", "Request is missing Authentication Token")
            call.signer = claim.access_key
            refusal = self.ring.refusal(claim.access_key, claim.token)
            if refusal == "expired":
                return self._error(call, 400, "ExpiredToken", "The security token included in the request is expired")
            key = self.ring.get(claim.access_key)
            if refusal is not None or key is None:
                return self._error(
                    call, 403, "InvalidClientTokenId", "The security token included in the request is invalid."
                )
            if claim.service != "sts" or claim.region != self.region or not claim.valid(key.secret_key):
                return self._error(
                    call, 403, "SignatureDoesNotMatch", "The request signature we calculated does not match"
                )
        elif call.action == "AssumeRoleWithWebIdentity":
            if self.web_identity_tokens is not None and params.get("WebIdentityToken") not in self.web_identity_tokens:
                return self._error(call, 400, "InvalidIdentityToken", "Couldn't verify the web identity token (test)")
        else:
            return self._error(call, 400, "InvalidAction", f"Could not find operation {call.action}")
        lifetime = self.lifetimes.get(call.action, float(params.get("DurationSeconds", 3600)))
        key = self.ring.issue(lifetime, call.action)
        call.issued = key
        role = params.get("RoleArn", "").rsplit("/", 1)[-1]
        session = params.get("RoleSessionName", "")
        body_xml = (
            f'<{call.action}Response xmlns="{STS_NS}"><{call.action}Result>'
            f"<Credentials><AccessKeyId>{key.access_key}</AccessKeyId>"
            f"<SecretAccessKey>{key.secret_key}</SecretAccessKey>"
            f"<SessionToken>{key.token}</SessionToken><Expiration>{iso(key.expiry or 0)}</Expiration></Credentials>"
            f"<AssumedRoleUser><AssumedRoleId>AROATESTROLE:{escape(session)}</AssumedRoleId>"
            f"<Arn>arn:aws:sts::{ACCOUNT}:assumed-role/{escape(role)}/{escape(session)}</Arn></AssumedRoleUser>"
            f"</{call.action}Result><ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            f"</{call.action}Response>"
        )
        return web.Response(body=body_xml.encode(), content_type="text/xml")

    def _error(self, call: StsCall, status: int, code: str, message: str) -> web.Response:
        call.error = code
        fault = "Sender" if status < 500 else "Receiver"
        doc = (
            f'<ErrorResponse xmlns="{STS_NS}"><Error><Type>{fault}</Type><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
        )
        return web.Response(status=status, body=doc.encode(), content_type="text/xml")


# ---------------------------------------------------------------------------------------------------------
# the upstream: Secrets Manager speaking AWS JSON 1.1


@dataclass
class UpstreamCall:
    access_key: str | None
    token: str | None
    amz_date: str | None
    status: int = 0
    code: str | None = None


@dataclass
class FakeSecretsManager:
    """The upstream. ``skew_seconds`` is this server's clock minus the real one; ``skew_code`` the error a
    refused signing time gets; ``fail_next`` holds (status, code, message) answers to give before any other."""

    ring: KeyRing
    region: str = "us-east-1"
    skew_seconds: float = 0.0
    skew_code: str = "InvalidSignatureException"
    fail_next: list[tuple[int, str, str]] = field(default_factory=list)
    calls: list[UpstreamCall] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self._handle)
        return app

    @property
    def accepted(self) -> list[UpstreamCall]:
        return [c for c in self.calls if c.status == 200]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time() + self.skew_seconds
        claim = sigv4_claim(request, body)
        call = UpstreamCall(
            claim.access_key if claim else None, claim.token if claim else None, claim.amz_date if claim else None
        )
        self.calls.append(call)
        date = email.utils.formatdate(now, usegmt=True)
        if claim is None:
            return self._error(call, date, 400, "MissingAuthenticationTokenException", "Missing Authentication Token")
        refusal = self.ring.refusal(claim.access_key, claim.token)
        if refusal == "invalid":
            return self._error(
                call, date, 400, "UnrecognizedClientException", "The security token included in the request is invalid."
            )
        if refusal == "expired":
            return self._error(
                call, date, 400, "ExpiredTokenException", "The security token included in the request is expired"
            )
        sent = amz_epoch(claim.amz_date)
        if abs(sent - now) > 300:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
            if sent < now:
                limit = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now - 300))
                message = f"Signature expired: {claim.amz_date} is now earlier than {limit} ({stamp} - 5 min.)"
            else:
                limit = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now + 300))
                message = f"Signature not yet current: {claim.amz_date} is still later than {limit} ({stamp} + 5 min.)"
            return self._error(
                call, date, 400 if self.skew_code == "InvalidSignatureException" else 403, self.skew_code, message
            )
        key = self.ring.get(claim.access_key)
        assert key is not None
        if claim.service != "secretsmanager" or claim.region != self.region or not claim.valid(key.secret_key):
            return self._error(
                call, date, 400, "InvalidSignatureException", "The request signature we calculated does not match"
            )
        if self.fail_next:
            status, code, message = self.fail_next.pop(0)
            return self._error(call, date, status, code, message)
        target = request.headers.get("X-Amz-Target", "")
        if target != "secretsmanager.GetSecretValue":
            return self._error(call, date, 400, "InvalidAction", f"not in this fake: {target}")
        secret_id = json.loads(body)["SecretId"]
        call.status = 200
        doc = {
            "ARN": f"arn:aws:secretsmanager:{self.region}:{ACCOUNT}:secret:{secret_id}-AbCdEf",
            "Name": secret_id,
            "VersionId": "11111111-2222-3333-4444-555555555555",
            "SecretString": SECRET_VALUE,
            "VersionStages": ["AWSCURRENT"],
            "CreatedDate": 1700000000.0,
        }
        return web.Response(
            body=json.dumps(doc).encode(),
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "x-amzn-RequestId": str(uuid.uuid4()),
                "Date": date,
            },
        )

    def _error(self, call: UpstreamCall, date: str, status: int, code: str, message: str) -> web.Response:
        call.status, call.code = status, code
        return web.Response(
            status=status,
            body=json.dumps({"__type": code, "message": message}).encode(),
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "x-amzn-RequestId": str(uuid.uuid4()),
                "Date": date,
            },
        )


# ---------------------------------------------------------------------------------------------------------
# container credentials (EKS Pod Identity agent) and instance metadata


@dataclass
class FakeContainerCredentials:
    """``GET /v1/credentials`` with ``Authorization: <token>``; ``tokens`` are the accepted ones (None: any)."""

    ring: KeyRing
    lifetime: float = 3600.0
    tokens: set[str] | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/credentials", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization")
        self.calls.append({"token": token})
        if self.tokens is not None and token not in self.tokens:
            return web.json_response({"Code": "AccessDenied", "Message": "bad token (test)"}, status=401)
        key = self.ring.issue(self.lifetime, "container")
        return web.json_response(
            {
                "AccessKeyId": key.access_key,
                "SecretAccessKey": key.secret_key,
                "Token": key.token,
                "Expiration": iso(key.expiry or 0),
                "AccountId": ACCOUNT,
            }
        )


@dataclass
class FakeIMDS:
    """IMDSv2: ``PUT /latest/api/token``, then the role name and its credentials under
    ``/latest/meta-data/iam/security-credentials/``, each GET carrying the session token."""

    ring: KeyRing
    lifetime: float = 6 * 3600.0
    role: str = "test-instance-role"
    calls: list[str] = field(default_factory=list)
    _token: str = field(default_factory=lambda: secrets.token_urlsafe(20))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/latest/api/token", self._token_handler)
        app.router.add_get("/latest/meta-data/iam/security-credentials/", self._role_handler)
        app.router.add_get("/latest/meta-data/iam/security-credentials/{role}", self._creds_handler)
        return app

    async def _token_handler(self, request: web.Request) -> web.Response:
        self.calls.append("token")
        if "x-aws-ec2-metadata-token-ttl-seconds" not in request.headers:
            return web.Response(status=400)
        return web.Response(text=self._token)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("x-aws-ec2-metadata-token") == self._token

    async def _role_handler(self, request: web.Request) -> web.Response:
        self.calls.append("role")
        return web.Response(text=self.role) if self._authorized(request) else web.Response(status=401)

    async def _creds_handler(self, request: web.Request) -> web.Response:
        self.calls.append("credentials")
        if not self._authorized(request) or request.match_info["role"] != self.role:
            return web.Response(status=401)
        key = self.ring.issue(self.lifetime, "imds")
        return web.json_response(
            {
                "Code": "Success",
                "LastUpdated": iso(time.time()),
                "Type": "AWS-HMAC",
                "AccessKeyId": key.access_key,
                "SecretAccessKey": key.secret_key,
                "Token": key.token,
                "Expiration": iso(key.expiry or 0),
            }
        )


# ---------------------------------------------------------------------------------------------------------
# the whole world for one test: the fakes, the clock, and proxies pointed at them


def wait_until(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    """:func:`tests.support.poll` with the credential tests' default of 15 s."""
    poll(predicate, timeout, what)


class FakeAWS:
    """A test STS and upstream over TLS (one throwaway CA), optional container and IMDS endpoints, one fake
    clock, and the proxies started against them (``upstream.endpoint_url``, ``upstream.ca_bundle``,
    ``AWS_ENDPOINT_URL_STS``). Close with :meth:`close` (opens gates, stops proxies, then the fakes)."""

    ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/app-secrets-reader"

    def __init__(self, tmp_path: Any, ca: Any, monkeypatch: Any) -> None:
        import ssl

        from tests.support import ServerThread

        self._server_thread = ServerThread
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch
        self.clock = ManualClock(float(int(time.time())))  # starts at the real time
        self.ring = KeyRing(self.clock)
        self.sts = FakeSTS(self.ring)
        self.upstream = FakeSecretsManager(self.ring)
        self.ca_file = str(tmp_path / "fake-aws-ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ssl)
        self._servers: list[Any] = []
        self.proxies: list[Any] = []
        self.sts_server = self._start(self.sts.app, server_ssl)
        self.upstream_server = self._start(self.upstream.app, server_ssl)
        self.container: FakeContainerCredentials | None = None
        self.imds: FakeIMDS | None = None
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", self.sts_server.url)
        monkeypatch.setenv("AWS_REGION", "us-east-1")

    def _start(self, factory: Any, ssl_context: Any = None) -> Any:
        server = self._server_thread(factory, ssl_context=ssl_context).__enter__()
        self._servers.append(server)
        return server

    # sources --------------------------------------------------------------------------------------------

    def env_keys(self) -> Key:
        """Static source keys in ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``."""
        key = self.ring.static()
        self.monkeypatch.setenv("AWS_ACCESS_KEY_ID", key.access_key)
        self.monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key.secret_key)
        return key

    def config_file(self, text: str) -> str:
        path = self.tmp_path / "aws-config"
        path.write_text(text)
        self.monkeypatch.setenv("AWS_CONFIG_FILE", str(path))
        return str(path)

    def token_file(self, name: str, token: str) -> Any:
        """A kubelet-style projected token: ``<name>/token -> ..data/token``, ``..data -> ..<version>``.
        Returns a function that swaps in a new token atomically (a new version dir, then the ``..data`` link)."""
        root = self.tmp_path / name
        root.mkdir()
        versions = itertools.count(1)

        def write(value: str) -> None:
            version = root / f"..v{next(versions)}"
            version.mkdir()
            (version / "token").write_text(value)  # no trailing newline, as kubelet writes it
            link = root / "..data_tmp"
            link.symlink_to(version.name)
            link.replace(root / "..data")

        write(token)
        (root / "token").symlink_to("..data/token")
        write.path = str(root / "token")  # type: ignore[attr-defined]
        return write

    def irsa(self, token: str = "web-identity-token-1", role: str = "irsa-role") -> Any:
        swap = self.token_file("irsa", token)
        self.monkeypatch.setenv("AWS_ROLE_ARN", f"arn:aws:iam::{ACCOUNT}:role/{role}")
        self.monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", swap.path)
        return swap

    def pod_identity(self, token: str = "pod-identity-token-1") -> Any:
        self.container = FakeContainerCredentials(self.ring)
        server = self._start(self.container.app)
        swap = self.token_file("pod-identity", token)
        self.monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{server.url}/v1/credentials")
        self.monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", swap.path)
        return swap

    def instance_metadata(self) -> FakeIMDS:
        self.imds = FakeIMDS(self.ring)
        server = self._start(self.imds.app)
        self.monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
        self.monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url + "/")
        return self.imds

    # the proxy ------------------------------------------------------------------------------------------

    def start_proxy(self, **sections: Any) -> Any:
        """The proxy against the fakes, on the fake clock; ``sections`` override the config."""
        from proxy.app import create_app

        data: dict[str, Any] = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "upstream": {
                "region": "us-east-1",
                "endpoint_url": self.upstream_server.url,
                "ca_bundle": self.ca_file,
            },
        }
        cfg = merged_config(data, sections)
        proxy = self._server_thread(lambda: create_app(cfg, clock=self.clock)).__enter__()
        self.proxies.append(proxy)
        return proxy

    @staticmethod
    def manager(proxy: Any) -> Any:
        from proxy.app import SHARED

        return proxy.app[SHARED].credentials

    def advance(self, seconds: float) -> None:
        """Move the fake clock and let every proxy's refresher look at its schedule."""
        self.clock.advance(seconds)
        for proxy in self.proxies:
            proxy.loop.call_soon_threadsafe(self.manager(proxy).wake)

    def get_secret(self, proxy: Any, secret_id: str = "app/db") -> Any:
        from tests.support import raw_request

        target = f"/?Action=GetSecretValue&SecretId={urllib.parse.quote(secret_id, safe='')}&Version=2017-10-17"
        return raw_request(proxy.port, "GET", target)

    def get(self, proxy: Any, path: str) -> Any:
        from tests.support import raw_request

        return raw_request(proxy.port, "GET", path)

    def ok(self, proxy: Any) -> str:
        """One GetSecretValue through the proxy that must answer 200; returns the access key that signed it."""
        resp = self.get_secret(proxy)
        assert resp.status == 200, resp.body
        assert SECRET_VALUE.encode() in resp.body
        last = self.upstream.calls[-1]
        assert last.status == 200 and last.access_key is not None
        return last.access_key

    def metric(self, proxy: Any, name: str, labels: str = "", default: float | None = None) -> float:
        """One sample scraped from the proxy's /metrics; ``default`` when absent (else that fails the test)."""
        text = self.get(proxy, "/metrics").body.decode()
        m = re.search(rf"^query_signing_proxy_{name}{re.escape(labels)} (\S+)$", text, re.M)
        if m is None and default is not None:
            return default
        assert m is not None, f"{name}{labels} not in /metrics"
        return float(m.group(1))

    def settle(self, proxy: Any, action: str | None = None) -> None:
        """Wait until every STS call the proxy made (of ``action``: the last call of each fetch) has finished
        and been counted as a refresh."""

        def counted() -> bool:
            done = sum(
                self.metric(proxy, "credential_refreshes_total", f'{{result="{result}"}}', default=0)
                for result in ("success", "error")
            )
            return self.sts.waiting == 0 and done == len([c for c in self.sts.calls if action in (None, c.action)])

        wait_until(counted, what="STS calls to finish")

    def wait_ready(self, proxy: Any) -> None:
        wait_until(lambda: self.get(proxy, "/readyz").status == 200, what="/readyz 200")

    def advance_until(self, proxy: Any, predicate: Any, what: str, step: float = 5.0) -> None:
        """Move the fake clock ``step`` seconds at a time until ``predicate()`` holds, for a failed fetch's
        retry. Settles first: a fetch still in flight is counted before the clock moves, so its backoff (at
        most ``RETRY_MAX_SECONDS``, full jitter) runs from a time before the first step. Once that maximum has
        passed on the fake clock the retry is due, and ``predicate`` is polled in real time (AssertionError
        after ``wait_until``'s timeout)."""
        from proxy.credentials import RETRY_MAX_SECONDS

        self.settle(proxy)
        advanced = 0.0
        while advanced < RETRY_MAX_SECONDS and not predicate():
            self.advance(step)
            advanced += step
            self.settle(proxy)
        wait_until(predicate, what=f"{what} within {RETRY_MAX_SECONDS:g} s of fake time")

    def recover(self, proxy: Any) -> None:
        """End an STS outage (``sts.failure = None``) and advance the fake clock until the proxy is ready."""
        self.sts.failure = None
        self.advance_until(proxy, lambda: self.get(proxy, "/readyz").status == 200, what="/readyz 200")

    def close(self) -> None:
        self.sts.gate.open()
        for server in reversed(self.proxies + self._servers):
            server.__exit__(None, None, None)
