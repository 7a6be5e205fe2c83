"""Modbus polling cost on the gateway side: merged vs one-request-per-point, and a site load.

Run: ``.venv/bin/python -m bench.bench_polling`` (or ``python bench/bench_polling.py``).

The Modbus TCP simulator runs in a child process, so only the client's CPU is measured
(``time.process_time`` of this process). Two figures:

1. 10,000 points read once through ``ModbusDriver`` with merged requests and with one
   request per point: CPU seconds and request counts.
2. A 500-point site polled every 5 s for ~30 s (merged): the client's CPU as % of one core.
   Goal: under 5 %.
3. The same site through the whole gateway (``kemon gateway run`` as its own process: scheduler,
   driver, consumption, the store with one fsync'd transaction per cycle): that process's CPU
   (user + system) as % of one core over the same duration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway._model import BusConfig, MeterConfig, PointConfig
from gateway.drivers._modbus import ModbusDriver
from gateway.sim._modbus_sim import serve_modbus_tcp
from gateway.sim._values import SimMeter

BIG_METERS, BIG_POINTS = 100, 100     # 10,000 points
SITE_METERS, SITE_POINTS = 10, 50     # 500 points


def meter_points(n: int, prefix: str) -> tuple[PointConfig, ...]:
    """``n`` points laid out like a real meter map: float32 input registers in runs of ten,
    a few unused registers between runs, and every tenth point a counter."""
    points = []
    for i in range(n):
        register = i * 2 + (i // 10) * 4
        points.append(PointConfig(
            code=f"{prefix}.{i:03d}", register=register, function="input", type="float32",
            counter=i % 10 == 0, energy="electricity" if i % 10 == 0 else None,
        ))
    return tuple(points)


def build(meters: int, points: int) -> list[MeterConfig]:
    return [
        MeterConfig(name=f"m{u}", bus="bench", address=str(u),
                    points=meter_points(points, f"m{u}"))
        for u in range(1, meters + 1)
    ]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.platform()}; Python {platform.python_version()}; "
            f"{cpu}; {os.cpu_count()} CPUs")


# ---- simulator child ----------------------------------------------------------------------


def serve() -> None:
    """Child process: serve every bench meter over TCP, print the port, run until killed."""
    meters = build(BIG_METERS, BIG_POINTS)
    sims = [SimMeter(m.address, m.points) for m in meters]

    async def main() -> None:
        ready, bound = asyncio.Event(), list[int]()
        task = asyncio.create_task(serve_modbus_tcp(sims, ready=ready, bound=bound))
        await ready.wait()
        print(bound[0], flush=True)
        await task

    asyncio.run(main())


def start_simulator() -> tuple[subprocess.Popen[str], int]:
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_polling", "--serve"],
        cwd=root, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.strip().isdigit():
        proc.kill()
        proc.wait()
        raise SystemExit(f"simulator did not start (said {line!r})")
    return proc, int(line)


# ---- client -------------------------------------------------------------------------------


async def read_all(driver: ModbusDriver, meters: list[MeterConfig]) -> tuple[int, int]:
    """Read every meter once; (values read, requests made)."""
    values = requests = 0
    for m in meters:
        result = await driver.read_meter(m)
        values += len(result.values)
        requests += result.requests
    return values, requests


async def once(port: int, merge: bool) -> tuple[float, float, int, int]:
    """(CPU s, wall s, values, requests) for one read of the 10,000 points."""
    bus = BusConfig(name="bench", kind="modbus-tcp", host="127.0.0.1", tcp_port=port,
                    timeout=2.0)
    meters = build(BIG_METERS, BIG_POINTS)
    driver = ModbusDriver(bus, merge=merge)
    await driver.connect()
    try:
        await read_all(driver, meters[:2])             # warm up: imports, plans, buffers
        cpu0, wall0 = time.process_time(), time.perf_counter()
        values, requests = await read_all(driver, meters)
        return time.process_time() - cpu0, time.perf_counter() - wall0, values, requests
    finally:
        await driver.close()


async def site(port: int, period: float, duration: float) -> tuple[float, float, int, int]:
    """Poll 500 points every ``period`` s on the clock grid for ``duration`` s:
    (CPU s, wall s, cycles, requests per cycle)."""
    bus = BusConfig(name="bench", kind="modbus-tcp", host="127.0.0.1", tcp_port=port,
                    timeout=2.0)
    meters = build(SITE_METERS, SITE_POINTS)
    driver = ModbusDriver(bus)
    await driver.connect()
    try:
        await read_all(driver, meters)                 # warm up
        start = (time.time() // period + 1) * period   # next grid instant
        await asyncio.sleep(start - time.time())
        cpu0, wall0 = time.process_time(), time.perf_counter()
        cycles = per_cycle = 0
        tick = start
        while tick < start + duration:
            _, per_cycle = await read_all(driver, meters)
            cycles += 1
            tick += period
            await asyncio.sleep(max(0.0, tick - time.time()))
        return time.process_time() - cpu0, time.perf_counter() - wall0, cycles, per_cycle
    finally:
        await driver.close()


def site_config(port: int, data_dir: Path, period: float) -> str:
    """A gateway configuration for the site's meters, points inline."""
    lines = [
        "[gateway]", 'id = "BENCH"', 'unit = "91320100MA1ABCDE0C"', f'data_dir = "{data_dir}"',
        "require_time_sync = false", "",
        "[[bus]]", 'name = "bench"', 'kind = "modbus-tcp"', 'host = "127.0.0.1"',
        f"port = {port}", "timeout = 1.0", "",
    ]
    for m in build(SITE_METERS, SITE_POINTS):
        lines += ["[[meter]]", f'name = "{m.name}"', 'bus = "bench"', f"address = {m.address}",
                  f"interval = {int(period)}", ""]
        for p in m.points:
            lines += ["[[meter.point]]", f'code = "{p.code}"', f"register = {p.register}",
                      'function = "input"', 'type = "float32"']
            if p.counter:
                lines += ["counter = true", 'energy = "electricity"']
            lines.append("")
    return "\n".join(lines)


def whole_gateway(port: int, period: float, duration: float) -> tuple[float, float, int]:
    """Run ``kemon gateway run`` on the site; its CPU seconds, wall seconds, readings stored."""
    import tempfile

    import psutil

    from gateway._store import Store

    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gateway.toml"
        cfg.write_text(site_config(port, Path(tmp) / "data", period), encoding="utf-8")
        proc = subprocess.Popen([sys.executable, "-m", "kemon", "gateway", "run", "-c", str(cfg)],
                                cwd=root, stderr=subprocess.DEVNULL)
        try:
            ps = psutil.Process(proc.pid)
            time.sleep(2.0)                       # start-up (imports, store creation) excluded
            t0 = ps.cpu_times()
            w0 = time.monotonic()
            time.sleep(duration)
            t1 = ps.cpu_times()
            wall = time.monotonic() - w0
        finally:
            proc.terminate()
            proc.wait(15)
        cpu = (t1.user + t1.system) - (t0.user + t0.system)
        with Store.open_readonly(Path(tmp) / "data" / "store.db") as store:
            stored = store.count()
    return cpu, wall, stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--period", type=float, default=5.0, help="site poll period, s")
    parser.add_argument("--duration", type=float, default=30.0, help="site run time, s")
    args = parser.parse_args()
    if args.serve:
        serve()
        return

    print(f"machine: {machine()}")
    proc, port = start_simulator()
    try:
        merged = asyncio.run(once(port, merge=True))
        single = asyncio.run(once(port, merge=False))
        n = BIG_METERS * BIG_POINTS
        print()
        print(f"{n:,} points ({BIG_METERS} meters x {BIG_POINTS} float32 points), "
              "Modbus TCP on loopback, simulator in another process")
        print(f"{'mode':<22}{'requests':>10}{'CPU s / 10k pts':>18}{'wall s':>10}"
              f"{'CPU us / request':>18}")
        for label, (cpu, wall, values, requests) in (("merged (plan_reads)", merged),
                                                      ("one request per point", single)):
            assert values == n, f"{label}: read {values} of {n} values"
            print(f"{label:<22}{requests:>10,}{cpu * 10_000 / n:>18.3f}{wall:>10.2f}"
                  f"{cpu / requests * 1e6:>18.0f}")
        print(f"merging saves {single[3] / merged[3]:.0f}x the requests and "
              f"{single[0] / merged[0]:.1f}x the CPU")

        cpu, wall, cycles, per_cycle = asyncio.run(site(port, args.period, args.duration))
        pct = 100.0 * cpu / wall
        print()
        print(f"site: {SITE_METERS * SITE_POINTS} points ({SITE_METERS} meters), polled every "
              f"{args.period:g} s for {wall:.1f} s: {cycles} cycles of {per_cycle} requests")
        print(f"client CPU {cpu:.3f} s = {pct:.2f} % of one core "
              f"({'meets' if pct < 5 else 'MISSES'} the 5 % goal)")

        gcpu, gwall, stored = whole_gateway(port, args.period, args.duration)
        gpct = 100.0 * gcpu / gwall
        print(f"whole gateway process (kemon gateway run, store included): CPU {gcpu:.3f} s "
              f"over {gwall:.1f} s = {gpct:.2f} % of one core "
              f"({'meets' if gpct < 5 else 'MISSES'} the 5 % goal); {stored:,} readings stored")
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
