"""One collector process of the ingest benchmark (bench/bench_ingest.py starts it).

Run as ``python bench/_ingest_child.py '<json>'``; the JSON names the broker, the collector's
identity, the database, the share group and the client id. The process imports everything,
builds an :class:`collector._ingest.Ingest` (the code ``kemon collector run`` runs), prints
``ready`` and waits for a line on stdin:

* ``go`` — note the wall clock, run the ingest, and print one JSON line each time its counters
  change (``t``: wall clock seconds, then ``messages``, ``acked``, ``readings``, ``batches``,
  ``statuses``, ``duplicates``, ``quarantined``, ``groups``); ``stop`` (another line) ends it.
* ``prime`` — run until ``statuses`` reaches the JSON's ``births`` (the persistent session
  exists and every gateway's certificate is pinned), then stop by itself.

At the end it prints ``{"final": true, "t0": …, "maxrss_kib": …, …}`` (peak resident set size
of this process, ``VmHWM``), and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from collector._ingest import Ingest, IngestOptions, tune_gc_for_ingest  # noqa: E402
from collector._model import BrokerConfig, CollectorConfig, CollectorSection  # noqa: E402

POLL_S = 0.002        # how often the counters are looked at


def emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def snapshot(ingest: Ingest) -> dict[str, Any]:
    c = ingest.counters
    return {"messages": c.messages, "acked": c.acked, "readings": c.readings_stored,
            "batches": c.batches_stored, "statuses": c.statuses, "duplicates": c.duplicates,
            "quarantined": sum(c.quarantined.values()), "groups": c.groups,
            "pauses": c.pauses, "resend_requests": c.resend_requests}


async def run(args: dict[str, Any], mode: str) -> None:
    cfg = CollectorConfig(
        source=Path(args["source"]),
        collector=CollectorSection(role="province", region="320000",
                                   database=args["database"], queue=args["queue"]),
        broker=BrokerConfig(url=args["url"], ca_file=Path(args["ca"]),
                            cert_file=Path(args["cert"]), key_file=Path(args["key"]),
                            client_id=args["client_id"], share_group=args["share_group"],
                            keepalive=30))
    ingest = Ingest(cfg, IngestOptions(session_expiry=3600, report_interval=3600))
    tune_gc_for_ingest()                  # as ``kemon collector run`` does before running
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if mode == "go":
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        async def wait_stop() -> None:
            while line := await reader.readline():
                if line.strip() == b"stop":
                    break
            stop.set()

        stopper = asyncio.create_task(wait_stop())
    t0 = time.time()
    task = asyncio.create_task(ingest.run(stop))
    last = snapshot(ingest)
    while not task.done():
        await asyncio.sleep(POLL_S)
        now = snapshot(ingest)
        if now != last:
            last = now
            emit({"t": time.time(), **now})
        if mode == "prime" and now["statuses"] >= args["births"]:
            stop.set()
    await task
    if mode == "go":
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopper
    emit({"final": True, "t0": t0, "t": time.time(), "maxrss_kib": peak_rss_kib(),
          **snapshot(ingest)})


def peak_rss_kib() -> int:
    """This process's peak resident set size (``VmHWM``). Not ``getrusage``'s ``ru_maxrss``:
    Linux carries that over ``fork`` and ``exec``, so a child would report the benchmark's own
    (larger) peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class Sampler:
    """A poor man's sampling profiler (``KEMON_BENCH_SAMPLE=<file>``): every few ms, the
    innermost frames of every thread, counted; written to the file at the end. Sampling is
    by wall clock, so a thread waiting (on the database, the socket) shows as waiting."""

    def __init__(self, path: str, every: float = 0.002) -> None:
        import collections
        import threading
        self.path = path
        self.every = every
        self.counts: collections.Counter[str] = collections.Counter()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import threading
        me = threading.get_ident()
        names = {}
        while not self.done.wait(self.every):
            names.update({t.ident: t.name for t in threading.enumerate()})
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                stack: list[str] = []
                f: Any = frame
                while f is not None and len(stack) < 4:
                    code = f.f_code
                    stack.append(f"{Path(code.co_filename).name}:{code.co_name}")
                    f = f.f_back
                self.counts[f"{names.get(ident, ident)} | " + " < ".join(stack)] += 1

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        total = sum(self.counts.values())
        with open(self.path, "w") as out:
            for line, n in self.counts.most_common(80):
                out.write(f"{n:6d} {100 * n / total:5.1f}% {line}\n")


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = json.loads(sys.argv[1])
    emit({"ready": True})
    mode = sys.stdin.readline().strip()
    if mode not in ("go", "prime"):
        return 2
    import os
    sample = os.environ.get("KEMON_BENCH_SAMPLE") if mode == "go" else None
    sampler = Sampler(sample) if sample else None
    asyncio.run(run(args, mode))
    if sampler is not None:
        sampler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
