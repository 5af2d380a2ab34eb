"""The access line's cost: CPU µs to format and write one realistic record, as the proxy does it.

    .venv/bin/python bench/access_line.py [--lines 200000]

Each line goes through the proxy's own logging set-up (:func:`proxy.logs.setup`: the JSON formatter, the
library-debug filter, the handler that flushes at most every 50 ms on the event loop) into a file on disk
(a temporary file, so that the writes are real), from inside a running event loop as in the proxy, in
batches of 64 lines with a loop turn between them (the handler's timed flush runs in those turns). The record
is a GetSecretValue access line: the upstream's request id, the action, a secret name, statuses, a duration,
the attempts. Printed: µs of CPU (user + system) per line for the access line (:func:`proxy.logs.access`,
the prepared template) and, for comparison, for the same fields through the general path
(:func:`proxy.logs.emit` with ``extra=``), which writes the same text.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from proxy import logs  # noqa: E402

BATCH = 64
FIELDS = {
    "request_id": "a1b2c3d4-5678-90ab-cdef-1234567890ab",
    "action": "GetSecretValue",
    "secret_id": "prod/app/db",
    "status": 200,
    "upstream_status": 200,
    "duration_ms": 1.87,
    "attempts": 1,
}


async def measure(write: Callable[[], None], lines: int) -> float:
    """CPU µs per line of ``lines`` calls of ``write`` on the running loop."""
    for _ in range(BATCH * 4):  # warm-up
        write()
    await asyncio.sleep(0)
    started = time.process_time()
    for _ in range(lines // BATCH):
        for _ in range(BATCH):
            write()
        await asyncio.sleep(0)
    await asyncio.sleep(logs.LinesHandler.FLUSH_SECONDS * 2)  # the last timed flush
    return (time.process_time() - started) / (lines // BATCH * BATCH) * 1e6


async def run(lines: int, stream: object) -> dict[str, float]:
    handler = logs.setup("info", stream)
    access = logging.getLogger("proxy.access")
    try:
        template = await measure(lambda: logs.access(access, *FIELDS.values()), lines)
        general = await measure(lambda: logs.emit(access, logging.INFO, "request", FIELDS), lines)
    finally:
        logging.getLogger().removeHandler(handler)
    return {"access line (template)": template, "same fields, general path": general}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000, help="lines per measurement (default 200000)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "access.log"
        with open(path, "w", encoding="utf-8") as stream:
            figures = asyncio.run(run(args.lines, stream))
        size = path.stat().st_size
    print(
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.lines} lines each, {size} bytes written"
    )
    for name, us in figures.items():
        print(f"{name:28} {us:6.2f} µs CPU per line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
