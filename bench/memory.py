"""Idle memory of the proxy: how much is Python, aiohttp, botocore and the proxy itself.

    .venv/bin/python bench/memory.py [--workers 2] [--proxy-root DIR]

1. **Layers**: a fresh interpreter imports, step by step, what the proxy's run path imports (the standard
   library modules it uses, aiohttp with its web server, uvloop, botocore, the proxy's modules), then loads the
   default configuration and builds the application (botocore's Secrets Manager model and endpoint data, the
   translator, the policy); VmRSS after each step.
2. **The command**: ``python -m proxy`` with static keys in the environment (no role) and an admin listener,
   measured once ``/readyz`` answers 200 (credentials held, listeners bound) and a second has passed: VmRSS and
   PSS of each process; with ``--workers N`` also what each worker adds (PSS, the shared pages split).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import procs  # noqa: E402

LAYERS = """
import sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
steps = [("interpreter", rss())]
import asyncio, json, logging, ssl, socket, re, dataclasses, typing, collections, hashlib, hmac, zlib
steps.append(("standard library (asyncio, ssl, json, logging ...)", rss()))
import aiohttp, aiohttp.web
steps.append(("aiohttp (client and web server, multidict, yarl)", rss()))
try:
    import uvloop
except ImportError:
    pass
steps.append(("uvloop", rss()))
import botocore.session, botocore.serialize, botocore.parsers, botocore.credentials
steps.append(("botocore (imported)", rss()))
import proxy.__main__, proxy.app, proxy.logs
steps.append(("the proxy's modules (with prometheus-client, PyYAML, orjson)", rss()))
from proxy.config import load_config
from proxy.app import create_app
create_app(load_config(None, region_from_env="us-east-1"))
steps.append(("the application built (botocore's model and endpoint data, translator, policy)", rss()))
print(json.dumps(steps))
"""


def environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="AKIDBENCHEXAMPLE",
        AWS_SECRET_ACCESS_KEY="bench-secret-access-key",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return env


def layers(root: Path) -> list[tuple[str, float]]:
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + LAYERS], cwd=root, env=environ(), capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return [(name, float(mib)) for name, mib in json.loads(out.stdout)]


def idle(root: Path, workers: int) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="qsp-memory-"))
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstream": {"region": "us-east-1", "endpoint_url": "https://127.0.0.1:9"},
    }
    (workdir / "proxy.yaml").write_text(json.dumps(config))
    log = workdir / "proxy.log"
    args = [sys.executable, "-m", "proxy", "--config", str(workdir / "proxy.yaml")]
    if workers > 1:
        args += ["--workers", str(workers)]
    with open(log, "wb") as out:
        process = subprocess.Popen(args, cwd=root, env=environ(), stderr=out, stdout=subprocess.DEVNULL)
    try:
        admin_ports: list[int] = []
        deadline = time.monotonic() + 60
        while len(admin_ports) < workers:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the proxy did not start: {log.read_text()[-2000:]}")
            admin_ports = [
                json.loads(line)["admin_port"]
                for line in log.read_text().splitlines()
                if '"listening"' in line and '"admin_port"' in line
            ]
            time.sleep(0.05)
        for port in admin_ports:
            while True:
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("/readyz never answered 200")
                time.sleep(0.05)
        time.sleep(1.0)
        pids = procs.tree(process.pid)
        rss = {pid: procs.rss_kib([pid]) / 1024 for pid in pids}
        pss = {pid: procs.pss_kib([pid]) / 1024 for pid in pids}
        return {"pids": pids, "rss_mib": rss, "pss_mib": pss}
    finally:
        process.terminate()
        process.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="also measure --workers N (default 2; 1 to skip)")
    parser.add_argument("--proxy-root", type=Path, default=ROOT, help="the checkout whose proxy is measured")
    args = parser.parse_args(argv)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| layer | VmRSS after | added |")
    print("|---|---:|---:|")
    previous = 0.0
    for name, mib in layers(args.proxy_root):
        print(f"| {name} | {mib:.1f} MiB | {mib - previous:+.1f} MiB |")
        previous = mib
    one = idle(args.proxy_root, 1)
    (pid,) = one["pids"]  # type: ignore[misc]
    rss1, pss1 = one["rss_mib"][pid], one["pss_mib"][pid]  # type: ignore[index]
    print(f"\n`python -m proxy`, idle, /readyz 200: VmRSS {rss1:.1f} MiB, PSS {pss1:.1f} MiB")
    if args.workers > 1:
        many = idle(args.proxy_root, args.workers)
        pss_all = sum(many["pss_mib"].values())  # type: ignore[attr-defined]
        rss_all = [f"{v:.1f}" for v in many["rss_mib"].values()]  # type: ignore[attr-defined]
        print(
            f"`--workers {args.workers}`: VmRSS per process (parent first) {', '.join(rss_all)} MiB; PSS in all "
            f"{pss_all:.1f} MiB; each worker adds {(pss_all - pss1) / args.workers:.1f} MiB of PSS over one process"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
