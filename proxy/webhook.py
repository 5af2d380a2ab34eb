"""``query-signing-proxy injector``: the mutating admission webhook that serves :mod:`proxy.injector` over TLS
(docs/add-to-your-app.md).

``POST /mutate`` takes an AdmissionReview (``admission.k8s.io/v1``, Kubernetes documentation "Dynamic Admission
Control") and answers one: ``allowed`` with a base64 JSONPatch for a pod to inject, ``allowed`` without a patch
for anything else, ``allowed: false`` with a one-line message for a pod that cannot be injected as annotated.
A dry-run review is answered like any other (the injector has no side effects). A body that is not an
AdmissionReview is answered 400 with one line; the API server then applies the webhook's ``failurePolicy``.
``GET /healthz`` answers 200 for kubelet's probes.

TLS: the certificate and key files are re-read when they change (cert-manager renews them in place). At each
TLS handshake the server-name callback compares the files' inode, size and modification time with what was
loaded; on a change a new context is loaded and the handshake continues on it. A pair that does not load
(the files caught mid-rotation) is logged once and the last good one kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import ssl
from typing import Any

from aiohttp import web

from . import __version__
from .config import ConfigError
from .injector import Defaults, InjectionRefused, has_sidecar, json_patch, mutate

log = logging.getLogger("proxy.injector")

API_VERSION = "admission.k8s.io/v1"
# The API server sends at most its request limit (3 MiB) of object plus the review around it.
MAX_REVIEW_BYTES = 8 * 1024 * 1024
SHUTDOWN_GRACE_SECONDS = 10.0


class BadReview(ValueError):
    """The body is not an ``admission.k8s.io/v1`` AdmissionReview with a request: answered 400 with ``str()``."""


# ---------------------------------------------------------------------------------------------------------
# TLS whose files may change


def _file_state(path: str) -> tuple[int, int, int]:
    st = os.stat(path)  # follows symlinks: a Secret volume swaps its ..data link on update
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ReloadingCertificate:
    """A server SSLContext for ``cert_file``/``key_file`` that follows changes to the files.

    Raises ConfigError naming the flag when the files do not load at start.
    """

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.reloads = 0
        try:
            self._state = self._states()
            self._current = self._load()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"--tls-cert-file/--tls-key-file: cannot load the certificate and key: {exc}") from exc
        self._failed_state: object = None
        self.context = self._current
        self.context.sni_callback = self._on_hello

    def _states(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        return _file_state(self.cert_file), _file_state(self.key_file)

    def _load(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def current(self) -> ssl.SSLContext:
        """The context of the files as they are now (reloaded if they changed since the last load)."""
        try:
            state = self._states()
        except OSError as exc:
            self._warn_once(("missing", str(exc)), exc)
            return self._current
        if state == self._state:
            return self._current
        try:
            fresh = self._load()
        except (OSError, ssl.SSLError) as exc:
            self._warn_once(state, exc)
            return self._current
        self._state, self._current = state, fresh
        self.reloads += 1
        log.info("certificate reloaded", extra={"cert_file": self.cert_file, "reloads": self.reloads})
        return fresh

    def _warn_once(self, state: object, exc: BaseException) -> None:
        if state != self._failed_state:
            self._failed_state = state
            log.warning("certificate files do not load; keeping the last good pair", extra={"error": str(exc)})

    def _on_hello(self, ssl_object: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        fresh = self.current()
        if fresh is not context:
            ssl_object.context = fresh


# ---------------------------------------------------------------------------------------------------------
# AdmissionReview


def _pod_name(obj: Any, request: dict[str, Any]) -> str:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    name = meta.get("name") or request.get("name") or (f"{meta['generateName']}*" if meta.get("generateName") else "")
    return str(name)


def review(body: Any, defaults: Defaults) -> tuple[dict[str, Any], dict[str, Any]]:
    """Answer one AdmissionReview: (the AdmissionReview to send back, fields for the log line).

    Raises BadReview for a body that is not an ``admission.k8s.io/v1`` AdmissionReview with a request uid.
    """
    if not isinstance(body, dict) or body.get("kind") != "AdmissionReview":
        raise BadReview("the body is not an AdmissionReview")
    if body.get("apiVersion") != API_VERSION:
        raise BadReview(f"apiVersion must be {API_VERSION}, got {body.get('apiVersion')!r}")
    request = body.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str) or not request["uid"]:
        raise BadReview("request.uid is missing")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    kind: dict[str, Any] = request["kind"] if isinstance(request.get("kind"), dict) else {}
    obj = request.get("object")
    fields = {
        "uid": request["uid"],
        "namespace": request.get("namespace"),
        "pod": _pod_name(obj, request),
        "operation": request.get("operation"),
        "dry_run": request.get("dryRun") is True,
    }
    if kind.get("group", "") != "" or kind.get("kind") != "Pod" or request.get("operation") != "CREATE":
        fields["result"] = "ignored"
    elif not isinstance(obj, dict):
        raise BadReview("request.object is not a pod")
    else:
        try:
            new = mutate(obj, defaults)
        except InjectionRefused as exc:
            response["allowed"] = False
            response["status"] = {"code": 400, "reason": "BadRequest", "message": f"query-signing-proxy: {exc}"}
            fields["result"] = "refused"
            fields["reason"] = str(exc)
        else:
            ops = json_patch(obj, new)
            spec = obj.get("spec")
            injected_before = isinstance(spec, dict) and has_sidecar(spec)
            if ops:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode("ascii")
                fields["result"] = "credentials moved" if injected_before else "injected"
            else:
                fields["result"] = "unchanged"
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}, fields


def create_injector_app(defaults: Defaults) -> web.Application:
    """The webhook's aiohttp application: ``POST /mutate`` and ``GET /healthz``."""
    app = web.Application(client_max_size=MAX_REVIEW_BYTES)

    async def mutate_route(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
            answer, fields = review(body, defaults)
        except (ValueError, RecursionError) as exc:  # JSON errors and BadReview
            reason = str(exc) if isinstance(exc, BadReview) else "the body is not JSON"
            log.warning("bad admission review", extra={"reason": reason})
            return web.Response(status=400, text=f"query-signing-proxy injector: {reason}\n")
        level = logging.WARNING if fields.get("result") == "refused" else logging.INFO
        log.log(level, "admission review", extra=fields)
        return web.json_response(answer)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app.router.add_post("/mutate", mutate_route)
    app.router.add_get("/healthz", healthz)
    return app


async def serve_injector(host: str, port: int, defaults: Defaults, tls: ReloadingCertificate) -> None:
    """Serve the webhook on ``host:port`` over TLS until SIGTERM/SIGINT, then let reviews in flight finish."""
    from .app import bind_socket  # raises ListenError naming host:port

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(
        create_injector_app(defaults), access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS, handle_signals=False
    )
    await runner.setup()
    try:
        sock = bind_socket(host, port)
        bound = sock.getsockname()[1]
        await web.SockSite(runner, sock, ssl_context=tls.context).start()
        log.info(
            "listening",
            extra={"host": host, "port": bound, "tls": True, "image": defaults.image, "version": __version__},
        )
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
        log.info("stopped")
