"""Two checkouts' proxies side by side: CPU µs per request, runs interleaved, against one upstream.

    .venv/bin/python bench/compare.py BEFORE_DIR AFTER_DIR [--seconds 5] [--repeats 3]
                                      [--loads get16,get64,post16,post64] [--cache]

Where ``bench/run.py --proxy-root`` measures one checkout per run, this starts one proxy of each checkout
(``python -m proxy`` in that directory, as :class:`bench.run.Proxy` does) against the same fake upstream and
alternates their runs load by load, so that both figures of a row come from the same minutes of a machine
shared with others. Printed per load and checkout: the median CPU µs per request (utime + stime of the proxy's
processes over the run) with every repeat's figure, req/s and p99. ``--cache`` turns the secret cache on in
both (every answer after the warm-up is a cache hit).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import run as harness  # noqa: E402
from bench.loadgen import Load, have_wrk  # noqa: E402
from bench.upstream import UpstreamProcess  # noqa: E402

LOADS: dict[str, Callable[[int, float], Load]] = {
    "get1": lambda port, s: harness.query_get(port, harness.SECRET_QUERY, 1, s),
    "get16": lambda port, s: harness.query_get(port, harness.SECRET_QUERY, 16, s),
    "get64": lambda port, s: harness.query_get(port, harness.SECRET_QUERY, 64, s),
    "post16": lambda port, s: harness.query_post(port, harness.SECRET_QUERY, 16, s),
    "post64": lambda port, s: harness.query_post(port, harness.SECRET_QUERY, 64, s),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs=2, type=Path, metavar="DIR", help="the two checkouts (before, after)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per load and checkout (default 3)")
    parser.add_argument("--loads", default="get16,get64,post16,post64", help=f"of {', '.join(LOADS)}")
    parser.add_argument("--cache", action="store_true", help="the secret cache on in both proxies")
    args = parser.parse_args(argv)
    loads = args.loads.split(",")
    unknown = [name for name in loads if name not in LOADS]
    if unknown:
        parser.error(f"unknown loads: {', '.join(unknown)}")
    tool = "wrk" if harness.ensure_wrk() and have_wrk() else "python"
    workdir = Path(tempfile.mkdtemp(prefix="qsp-compare-"))
    _, cert_file, key_file = ca_cert_key = harness.make_certs(workdir)
    upstream = UpstreamProcess(cert_file, key_file, harness.BIG_BYTES)
    proxies: list[harness.Proxy] = []
    try:
        for i, root in enumerate(args.roots):
            (workdir / str(i)).mkdir()
            proxies.append(
                harness.Proxy(workdir / str(i), upstream.port, ca_cert_key[0], 1, root.resolve(), cache=args.cache)
            )
        for proxy in proxies:  # warm-up: imports, first connections, the cache filled
            harness.run(harness.query_get(proxy.port, harness.SECRET_QUERY, 64, 2.0), tool)
        before = os.getloadavg()
        figures: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for _ in range(args.repeats):
            for name in loads:
                for i, proxy in enumerate(proxies):
                    result, cpu_us, _ = harness.measure(
                        LOADS[name](proxy.port, args.seconds), tool, upstream, proxy.pids
                    )
                    figures.setdefault((name, i), []).append((cpu_us or 0.0, result.rps, result.p99))
        after = os.getloadavg()
    finally:
        for proxy in proxies:
            proxy.stop()
        upstream.stop()
    print(
        f"load average {before[0]:.2f} -> {after[0]:.2f}; {args.seconds:g} s runs, {args.repeats} repeats, "
        f"{tool}; cache {'on' if args.cache else 'off'}"
    )
    print("| load | checkout | CPU µs/req (median; every run) | req/s | p99 ms |")
    print("|---|---|---:|---:|---:|")
    for name in loads:
        for i, root in enumerate(args.roots):
            runs = figures[(name, i)]
            cpus = [cpu for cpu, _, _ in runs]
            print(
                f"| {name} | {root} | {statistics.median(cpus):.0f} ({', '.join(f'{c:.0f}' for c in cpus)}) | "
                f"{statistics.median(r for _, r, _ in runs):.0f} | {statistics.median(p for _, _, p in runs) * 1e3:.1f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
