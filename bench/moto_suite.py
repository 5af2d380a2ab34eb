"""moto's own Secrets Manager tests, run directly against moto's server and through the proxy (issue 15).

    .venv/bin/python bench/moto_suite.py [--work DIR] [--modes direct,sdk-routes,query-routes,sdk-regions]
                                         [-k EXPRESSION] [--json FILE]

Not part of the test suite: it downloads moto's source distribution (``pip download --no-binary :all:
moto==<installed version>``; the sdist ships ``tests/test_secretsmanager``) and takes a few minutes. What it
does, for each mode, against a fresh moto server (``moto_server`` over TLS with a throwaway CA, as in the
integration tests; signature checking off, as moto's own server mode runs):

- ``direct``: moto's tests in moto's server mode (``TEST_SERVER_MODE=true``), unchanged;
- ``sdk-routes``: the proxy as a process (``python -m proxy --config ...``), one listener per region
  (``upstream.region`` plus a ``routes:`` entry for each other region), ``allow_actions: ["*"]``; the tests' own
  signed Secrets Manager clients point at the listener of their region;
- ``query-routes``: the same proxy; each Secrets Manager client is an unsigned awsQuery client built from a
  query-protocol copy of botocore's model (the legacy app of docs/query-encoding.md), at its region's listener;
- ``sdk-regions``: one listener whose ``upstream.regions`` lists the seven regions; every SDK client points at
  it, and the proxy sends each call to the region it was signed for.

Other clients (STS, IAM, Lambda) and moto's per-test reset go to moto directly (``bench/moto_suite_plugin.py``).
It prints, per mode, how many tests passed, and every test that passes directly but not through the proxy
(and the reverse). bench/README.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ElementTree
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from proxy.local import MotoServer, clean_aws_environ, free_port  # noqa: E402
from tests.support import query_model  # noqa: E402

MODES = ("direct", "sdk-routes", "query-routes", "sdk-regions")
# The four regions moto's tests use, and three more (issue 15: seven regions).
REGIONS = ("us-east-1", "us-east-2", "us-west-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2")
MAIN_REGION = REGIONS[0]
SUITE = "tests/test_secretsmanager"
# Known differences, printed with the tests they explain:
KNOWN = {
    # docs/query-encoding.md, "What Query cannot say": ReplicateSecretToRegions(AddReplicaRegions=[{}]) is a
    # list of one empty structure; botocore's QuerySerializer writes nothing for it, so the Query client sends
    # no AddReplicaRegions and the proxy refuses the missing required member before moto answers its own error.
    "test_update_replica": "AddReplicaRegions=[{}]: the Query wire format as botocore writes it cannot express it",
    # docs/interface.md, "Errors": PasswordLength=5555 is over the model's max of 4096; moto answers its own
    # InvalidParameterValue, a code Secrets Manager's model does not have, and the proxy the model's
    # InvalidParameterException, as issue 15 requires.
    "test_get_random_too_long_password": "asserts moto's own code InvalidParameterValue, not in Secrets Manager's "
    "model; the proxy answers InvalidParameterException",
}


def fetch_tests(work: Path) -> Path:
    """moto's test tree for the installed moto version, from its sdist on PyPI (downloaded once into ``work``)."""
    moto_version = version("moto")
    tree = work / f"moto-{moto_version}"
    if (tree / SUITE / "test_secretsmanager.py").is_file() and (tree / "tests" / "test_ecr").is_dir():
        return tree
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", f"moto=={moto_version}"]
        + ["-d", str(work)],
        check=True,
    )
    # the suite imports moto's other test packages (test_awslambda -> test_ecr ...): take the whole test tree
    wanted = (f"moto-{moto_version}/tests/",)
    with tarfile.open(work / f"moto-{moto_version}.tar.gz") as sdist:
        members = [m for m in sdist.getmembers() if m.name.startswith(wanted)]
        if not any(m.name.startswith(f"{wanted[0]}{SUITE.removeprefix('tests/')}/") for m in members):
            raise SystemExit(f"moto {moto_version}'s sdist has no {SUITE}: fetch the tests from moto's repository")
        sdist.extractall(work, members=members, filter="data")
    return tree


def proxy_config(moto: MotoServer, mode: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The proxy's config for ``mode`` and the port of each region's listener."""
    upstream = {"endpoint_url": moto.url, "ca_bundle": moto.ca_file}
    policy = {"allow_actions": ["*"]}
    ports = {region: free_port() for region in REGIONS}
    cfg: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": ports[MAIN_REGION]},
        "upstream": {"region": MAIN_REGION, **upstream},
        "policy": policy,
        "limits": {"max_concurrent_requests": 64},
    }
    if mode == "sdk-regions":
        cfg["upstream"]["regions"] = [r for r in REGIONS if r != MAIN_REGION]
        return cfg, {"*": ports[MAIN_REGION]}
    cfg["routes"] = [
        {"port": ports[r], "upstream": {"region": r, **upstream}, "policy": policy} for r in REGIONS if r != MAIN_REGION
    ]
    return cfg, ports


def wait_for(port: int, path: str | None, deadline: float) -> None:
    """Poll until ``port`` accepts a connection (and ``path`` answers 200, when given)."""
    while True:
        try:
            if path is None:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the proxy did not serve on port {port} in time")
        time.sleep(0.05)


def run_suite(tree: Path, moto: MotoServer, mode: str, work: Path, select: str | None) -> dict[str, str]:
    """Run moto's tests in ``mode``; returns test id -> outcome (passed, failed, error, skipped)."""
    env = clean_aws_environ()
    env.update(
        {
            "TEST_SERVER_MODE": "true",
            "TEST_SERVER_MODE_ENDPOINT": moto.url,
            "AWS_CA_BUNDLE": moto.ca_file,
            "REQUESTS_CA_BUNDLE": moto.ca_file,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": MAIN_REGION,
            "PYTHONPATH": str(ROOT / "bench"),
            # only moto_suite_plugin: the plugins other packages install (cloudcoil's) are not moto's tests' business
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            "MOTO_SUITE_MODE": mode.split("-")[0],
        }
    )
    proxy: subprocess.Popen[bytes] | None = None
    log = None
    if mode != "direct":
        cfg, ports = proxy_config(moto, mode)
        cfg_file = work / f"proxy-{mode}.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg))
        proxy_env = clean_aws_environ()
        proxy_env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
        log = open(work / f"proxy-{mode}.log", "wb")  # noqa: SIM115 (closed below)
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--config", str(cfg_file), "--log-level", "warning"],
            cwd=ROOT,
            env=proxy_env,
            stderr=log,
        )
        deadline = time.monotonic() + 60
        wait_for(cfg["listen"]["port"], "/readyz", deadline)
        for port in ports.values():
            wait_for(port, None, deadline)
        env["MOTO_SUITE_ENDPOINTS"] = json.dumps({r: f"http://127.0.0.1:{p}" for r, p in ports.items()})
        if mode.startswith("query"):
            models = work / "query-models"
            target = models / "secretsmanager" / "2017-10-17"
            target.mkdir(parents=True, exist_ok=True)
            (target / "service-2.json").write_text(json.dumps(query_model("secretsmanager")))
            env["MOTO_SUITE_QUERY_MODELS"] = str(models)
    junit = work / f"junit-{mode}.xml"
    junit.unlink(missing_ok=True)  # a run that fails to start leaves no old results to be read as its own
    command = [sys.executable, "-m", "pytest", "-p", "moto_suite_plugin", "-p", "no:cacheprovider", "-q"]
    command += ["-o", "addopts=", "--rootdir", str(tree), "--continue-on-collection-errors", f"--junitxml={junit}"]
    command += [SUITE]
    command += ["-k", select] if select else []
    try:
        subprocess.run(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, check=False)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(30)
        if log is not None:
            log.close()
    return outcomes(junit)


def outcomes(junit: Path) -> dict[str, str]:
    if not junit.is_file():
        raise SystemExit(f"pytest wrote no {junit.name}: moto's tests did not run")
    results: dict[str, str] = {}
    for case in ElementTree.parse(junit).iter("testcase"):
        test_id = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        kinds = {child.tag for child in case}
        results[test_id] = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="working directory (default: a new temporary one)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("-k", dest="select", help="pytest -k expression (a subset of moto's tests)")
    parser.add_argument("--json", type=Path, help="write every test's outcome per mode to this file")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    work = args.work or Path(tempfile.mkdtemp(prefix="moto-suite-"))
    work.mkdir(parents=True, exist_ok=True)
    tree = fetch_tests(work)
    results: dict[str, dict[str, str]] = {}
    for mode in modes:
        moto = MotoServer(tempfile.mkdtemp(prefix=f"moto-{mode}-", dir=work))
        moto.start()
        try:
            started = time.monotonic()
            results[mode] = run_suite(tree, moto, mode, work, args.select)
            took = time.monotonic() - started
        finally:
            moto.stop()
        passed = sum(1 for v in results[mode].values() if v == "passed")
        print(f"{mode:13} {passed:4} of {len(results[mode])} passed ({took:.0f} s)", flush=True)
    if "direct" in results:
        direct = {t for t, v in results["direct"].items() if v == "passed"}
        for mode in (m for m in modes if m != "direct"):
            through = {t for t, v in results[mode].items() if v == "passed"}
            for test in sorted(direct - through):
                known = f" ({KNOWN[_name(test)]})" if _name(test) in KNOWN else ""
                print(f"  {mode}: passes directly, not through the proxy: {test}{known}")
            for test in sorted(through - direct):
                print(f"  {mode}: passes through the proxy, not directly: {test}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True))
    print(f"work directory: {work}")


def _name(test_id: str) -> str:
    return test_id.split("::", 1)[-1].split("[", 1)[0]


if __name__ == "__main__":
    main()
