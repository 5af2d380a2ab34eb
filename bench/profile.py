"""Where the proxy's CPU goes: py-spy's collapsed stacks (``bench/run.py --profile DIR``) summed by stage.

    .venv/bin/python bench/profile.py DIR [--cpu-us 480] [--top 25]

Each sample is given to the stage of the innermost frame of its stack that belongs to one (for a frame that
matches several, the first in :data:`STAGES`), so library code counts for the stage that called it
(SigV4's hashing counts as signing, the TLS record layer as TLS, wherever they were called from). With
``--cpu-us`` (the proxy's CPU µs per request from the same run) each share is also shown in µs per request.
The top functions by self time follow.

py-spy counts a thread as busy while the kernel has it runnable, so a process preempted inside a system call
(a ``send()`` on loopback wakes its peer, and on a busy machine the peer often runs first) is sampled there:
on a loaded machine the two writes per request (the answer to the client in aiohttp's ``_writelines``, the
request to the upstream in ``h1client``'s ``send``) look larger than the CPU they use. The CPU µs per request
of bench/run.py (utime + stime) is the figure to trust; the shares rank the Python stages.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

# (stage, frame pattern): tried on each frame from the innermost out; for one frame the first match wins.
STAGES: list[tuple[str, re.Pattern[str]]] = [
    ("thread pool (aiohttp trust_env: proxy env, netrc)", re.compile(r"concurrent/futures/thread|netrc|getproxies")),
    ("SigV4 signing", re.compile(r"proxy/(signing|sigv4)\.py|botocore/auth\.py")),
    ("JSON answer -> Query XML", re.compile(r"render_result|botocore/parsers\.py|proxy/render\.py")),
    ("typed input -> JSON 1.1 request", re.compile(r"json_request|botocore/serialize\.py|query_form")),
    ("awsQuery params -> typed input", re.compile(r"Translator\.decode|decode_input")),
    ("query string / form parse", re.compile(r"proxy/parse\.py")),
    ("access log (JSON line)", re.compile(r"logging/__init__\.py|proxy/logs\.py")),
    ("metrics", re.compile(r"prometheus_client")),
    ("rules, policy, cache", re.compile(r"proxy/(validate|policy|guard|cache)\.py")),
    ("retry loop, credentials", re.compile(r"proxy/(attempts|credentials)\.py")),
    ("TLS (ssl module)", re.compile(r"\bssl\.py|sslproto|SSLProtocol|SSLObject")),
    ("upstream client (proxy/h1client.py)", re.compile(r"proxy/h1client\.py")),
    ("aiohttp client (outbound-proxy routes)", re.compile(r"aiohttp/(client|connector|client_reqrep|client_proto)")),
    ("aiohttp server (listener)", re.compile(r"aiohttp/web_|aiohttp/http_")),
    ("proxy pipeline (other)", re.compile(r"proxy/")),
    ("event loop", re.compile(r"asyncio/|uvloop")),
]


# A thread parked on its work queue (asyncio.to_thread's pool, idle): py-spy cannot always tell it is idle.
IDLE = ("_worker (concurrent/futures/thread.py:81)",)


def read_stacks(directory: Path) -> collections.Counter[str]:
    stacks: collections.Counter[str] = collections.Counter()
    for path in sorted(directory.glob("*.txt")):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit() and not stack.endswith(IDLE):
                stacks[stack] += int(count)
    return stacks


def by_stage(stacks: collections.Counter[str]) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for stack, count in stacks.items():
        out[_stage(stack)] += count
    return out


def _stage(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for stage, pattern in STAGES:
            if pattern.search(frame):
                return stage
    return "other"


def self_time(stacks: collections.Counter[str]) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for stack, count in stacks.items():
        out[stack.rsplit(";", 1)[-1]] += count
    return out


def summary(directory: Path, cpu_us: float | None = None, top: int = 25) -> str:
    stacks = read_stacks(directory)
    total = sum(stacks.values())
    if not total:
        return "no samples"
    lines = ["| stage | share of samples | µs per request |", "|---|---:|---:|"]
    for stage, count in by_stage(stacks).most_common():
        share = count / total
        lines.append(
            f"| {stage} | {share:.1%} | {share * cpu_us:.0f} |" if cpu_us else f"| {stage} | {share:.1%} | - |"
        )
    lines += ["", f"Top {top} functions by self time ({total} samples):", ""]
    for frame, count in self_time(stacks).most_common(top):
        lines.append(f"- {count / total:5.1%}  {frame}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--cpu-us", type=float, help="proxy CPU µs per request in the profiled run")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print(summary(args.directory, args.cpu_us, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
