"""kill -9 in the middle of appending: the store stays intact and holds every reported cycle.

A child process appends cycles in a loop and prints each cycle's number after its commit
returned. The parent SIGKILLs it at a random moment, then checks the file.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway._store import Store

ROOT = Path(__file__).resolve().parent.parent
PER_CYCLE = 300

CHILD = f"""
import sys
from gateway._store import Store
from protocol import Period, Reading

store = Store(sys.argv[1])
n = 0
while True:
    rows = [Reading("p%03d" % i, Period.INSTANT, 1_790_000_000_000 + n * 60_000, float(n))
            for i in range({PER_CYCLE})]
    store.append_cycle(rows, {{"cycle": n}})
    print(n, flush=True)
    n += 1
"""


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_sigkill_mid_cycle_loses_no_reported_cycle(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "store.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        first = child.stdout.readline()             # running and committing
        assert first.strip() == "0", child.stderr.read() if child.stderr else ""
        time.sleep(random.Random(seed).uniform(0.05, 0.6))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    reported = [0] + [int(line) for line in out.split() if line.strip()]
    assert reported == list(range(len(reported)))
    last = reported[-1]

    with sqlite3.connect(path) as conn:            # recovers the WAL like any opener
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Store(path) as store:
        per_cycle: dict[float, int] = {}
        for r in store.query():
            per_cycle[r.value] = per_cycle.get(r.value, 0) + 1
        cycles = sorted(int(v) for v in per_cycle)
        # every reported cycle, possibly one more committed just before the kill; whole cycles
        assert cycles in (list(range(last + 1)), list(range(last + 2)))
        assert set(per_cycle.values()) == {PER_CYCLE}
        assert store.load_state("cycle") == cycles[-1]     # state committed with its readings
        assert last > 0
