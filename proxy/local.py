"""``query-signing-proxy local``: the proxy against an embedded AWS emulator, no AWS account needed (docs/interface.md,
"The embedded local upstream").

moto's server runs as a child process on loopback over TLS, with a certificate from a throwaway CA made by
``trustme``; a demo IAM user, a role it may assume and the secret ``demo/db-password`` are seeded; then
moto's signature checking is switched on, so every request the proxy signs is really verified. The proxy
assumes the role with the user's keys, exactly as it would assume a role in AWS.

:class:`MotoServer` and :func:`seed_demo` are also what the integration tests start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shlex
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import botocore.session
import trustme
import yaml
from botocore.config import Config as BotocoreConfig

from .config import Config, build, check, parse_listen

ACCOUNT_ID = "123456789012"
DEMO_USER = "demo-app-host"
DEMO_ROLE = "demo-secrets-reader"
DEMO_ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/{DEMO_ROLE}"
DEMO_SECRET = "demo/db-password"
DEMO_SECRET_VALUE = "correct-horse-battery-staple"
REGION = "us-east-1"

# The same content as config/local.yaml (a test keeps them equal).
LOCAL_CONFIG_YAML = f"""\
listen:
  host: 127.0.0.1
  port: 8977
upstream:
  service: secretsmanager
  region: {REGION}
credentials:
  role_arn: {DEMO_ROLE_ARN}
  role_session_name: query-signing-proxy-local
policy:
  allow_secrets: ["demo/*"]
"""


def clean_aws_environ(environ: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment without ``AWS_*`` and with instance metadata disabled, so botocore's
    credential chain never probes 169.254.169.254."""
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def local_environ() -> dict[str, str]:
    """The environment ``local`` runs in: :func:`clean_aws_environ`, and no shared config or credentials files
    (``~/.aws``: a profile's region, CA bundle or endpoint would point the emulator's clients elsewhere)."""
    env = clean_aws_environ()
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class MotoServer:
    """moto's server on 127.0.0.1 over TLS with a throwaway CA; ``url``, ``ca_file`` once started."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost", "::1")
        self.ca_file = os.path.join(workdir, "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.cert_file = os.path.join(workdir, "moto-cert.pem")
        self.key_file = os.path.join(workdir, "moto-key.pem")
        cert.cert_chain_pems[0].write_to_path(self.cert_file)
        cert.private_key_pem.write_to_path(self.key_file)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log = os.path.join(workdir, "moto.log")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def start(self, timeout: float = 60.0) -> None:
        """Start the child process and poll until it answers over TLS (no fixed sleeps)."""
        self.port = free_port()
        with open(self._log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from moto.server import main; main()",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-c",
                    self.cert_file,
                    "-k",
                    self.key_file,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_aws_environ(),
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto's server exited with {self.process.returncode}; see {self._log}")
            try:
                self.request("GET", "/moto-api/data.json")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto's server did not answer within {timeout} s; see {self._log}") from None
                time.sleep(0.05)

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "text/plain") -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers={"Content-Type": content_type})
        with urllib.request.urlopen(req, context=self.ssl_context(), timeout=10) as resp:
            data: bytes = resp.read()
            return data

    def set_auth(self, on: bool) -> None:
        """Switch moto's IAM signature checking on (every request verified) or off."""
        self.request("POST", "/moto-api/reset-auth", b"0" if on else b"inf")

    def client(
        self,
        service: str,
        access_key: str = "seed",
        secret_key: str = "seed",
        token: str | None = None,
        region: str = REGION,
    ) -> Any:
        """A botocore client speaking straight to the emulator, signing for ``region``."""
        session = botocore.session.Session()
        return session.create_client(
            service,
            region_name=region,
            endpoint_url=self.url,
            verify=self.ca_file,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            aws_session_token=token,
            config=BotocoreConfig(retries={"max_attempts": 1}),
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@dataclass(frozen=True)
class DemoAccount:
    access_key: str
    secret_key: str = dataclasses.field(repr=False)
    role_arn: str = DEMO_ROLE_ARN


def policy_document(*statements: dict[str, Any]) -> str:
    """An IAM policy document (JSON text, policy language version 2012-10-17) with these statements."""
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def seed_demo(moto: MotoServer, secrets: dict[str, str] | None = None) -> DemoAccount:
    """Create the demo user (allowed to assume the role), the role (allowed secretsmanager:*) and secrets.

    Call with moto's signature checking off.
    """
    iam = moto.client("iam")
    iam.create_user(UserName=DEMO_USER)
    iam.put_user_policy(
        UserName=DEMO_USER,
        PolicyName="assume-demo-role",
        PolicyDocument=policy_document({"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}),
    )
    key = iam.create_access_key(UserName=DEMO_USER)["AccessKey"]
    iam.create_role(
        RoleName=DEMO_ROLE,
        AssumeRolePolicyDocument=policy_document(
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:user/{DEMO_USER}"},
                "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
            }
        ),
    )
    iam.put_role_policy(
        RoleName=DEMO_ROLE,
        PolicyName="secrets",
        PolicyDocument=policy_document({"Effect": "Allow", "Action": "secretsmanager:*", "Resource": "*"}),
    )
    sm = moto.client("secretsmanager")
    for name, value in (secrets if secrets is not None else {DEMO_SECRET: DEMO_SECRET_VALUE}).items():
        sm.create_secret(Name=name, SecretString=value)
    return DemoAccount(key["AccessKeyId"], key["SecretAccessKey"])


def local_config(path: str | None, listen: str | None, moto: MotoServer) -> Config:
    """The proxy config for ``local``: the file (default: built-in) plus the emulator's URL and CA."""
    if path is None:
        data = yaml.safe_load(LOCAL_CONFIG_YAML)
    else:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    cfg: Config = build(Config, data)
    upstream = dataclasses.replace(cfg.upstream, endpoint_url=moto.url, ca_bundle=moto.ca_file, region=REGION)
    listen_cfg = cfg.listen
    if listen is not None:
        host, port = parse_listen(listen)
        listen_cfg = dataclasses.replace(listen_cfg, host=host, port=port)
    cfg = dataclasses.replace(cfg, upstream=upstream, listen=listen_cfg)
    check(cfg)
    return cfg


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def token_option(cfg: Config) -> str:
    """The curl option that sends the caller token when the config asks for one (``policy.token_header``), as
    `` -H "<header>: $(cat '<token_file>')"``: the shell reads the file, so the token itself is never printed.
    Empty without a token header."""
    header, path = cfg.policy.token_header, cfg.policy.token_file
    if header is None or path is None:
        return ""
    return f' -H "{header}: $(cat {shlex.quote(path)})"'


def run_local(config_path: str | None, listen: str | None) -> int:
    """Start the emulator, seed it, and serve the proxy until SIGINT/SIGTERM. Returns the exit code.

    The whole run sees :func:`local_environ`, not the shell's ``AWS_*`` (docs/interface.md, "The embedded local
    upstream"): a stale ``AWS_PROFILE`` or ``AWS_CA_BUNDLE`` would break the emulator's own clients."""
    from .app import create_app, serve

    with tempfile.TemporaryDirectory(prefix="qsp-local-") as workdir, environment(local_environ()):
        moto = MotoServer(workdir)
        try:
            print("starting the embedded AWS emulator (moto) on loopback ...", file=sys.stderr, flush=True)
            moto.start()
            account = seed_demo(moto)
            moto.set_auth(True)
            cfg = local_config(config_path, listen, moto)
            env = local_environ()
            env.update(
                AWS_ACCESS_KEY_ID=account.access_key,
                AWS_SECRET_ACCESS_KEY=account.secret_key,
                AWS_ENDPOINT_URL_STS=moto.url,
                AWS_CA_BUNDLE=moto.ca_file,
                AWS_REGION=REGION,
            )
            with environment(env):
                app = create_app(cfg)

                def ready(port: int, admin_port: int | None) -> None:
                    host = cfg.listen.host if ":" not in cfg.listen.host else f"[{cfg.listen.host}]"
                    scheme = "https" if cfg.listen.tls.enabled else "http"
                    print(
                        "\nThe proxy is up, assuming the demo role against the emulator. Try:\n\n"
                        f"  curl -s '{scheme}://{host}:{port}/?Action=GetSecretValue&SecretId=demo%2Fdb-password"
                        f"&Version=2017-10-17'{token_option(cfg)}\n\nCtrl-C stops it.\n",
                        flush=True,
                    )

                asyncio.run(serve(cfg, app=app, ready=ready))
        finally:
            moto.stop()
    return 0
