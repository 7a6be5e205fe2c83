"""`kemon sim`: serving a configuration's meters on a given serial device, and its errors."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from gateway._config import load_config
from gateway.drivers import open_driver
from gateway.sim._values import point_value

from .conftest import ROOT, UNIT, kemon_cmd, run_kemon


def rtu_config(tmp_path: Path, device: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f"""
[gateway]
id = "S"
unit = "{UNIT}"
data_dir = "data"
require_time_sync = false

[[bus]]
name = "rs485-1"
kind = "modbus-rtu"
port = "{device}"
timeout = 0.5

[[meter]]
name = "m"
bus = "rs485-1"
address = 5
profile = "iem3255"
""", encoding="utf-8")
    return path


def test_serves_a_serial_bus_on_the_given_device(tmp_path: Path, pty_pair) -> None:
    gateway_end, sim_end = pty_pair
    cfg_path = rtu_config(tmp_path, gateway_end)
    log = tmp_path / "sim.log"
    with log.open("wb") as out:
        sim = subprocess.Popen(kemon_cmd("sim", "-c", str(cfg_path), "--serial",
                                         f"rs485-1={sim_end}"),
                               stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 15
        while "sim: ready" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        cfg = load_config(cfg_path)
        driver = open_driver(cfg.buses[0])

        async def read() -> dict[str, float]:
            await driver.connect()
            try:
                return (await driver.read_meter(cfg.meters[0])).values
            finally:
                await driver.close()

        values = asyncio.run(read())
        now = time.time()
    finally:
        sim.terminate()
        assert sim.wait(10) == 0
    energy = next(p for p in cfg.meters[0].points if p.key == "import_kwh")
    assert values[energy.code] == pytest.approx(point_value(energy, now), abs=0.01)
    assert len(values) == len(cfg.meters[0].points)


@pytest.mark.parametrize(("extra", "words"), [
    (["--serial", "nope=/dev/null"], "no bus named 'nope'"),
    (["--serial", "rs485-1"], "is not BUS=DEVICE"),
    (["--fault", "m=explode"], "is not one of"),
    (["--fault", "x=silent"], "no meter named 'x'"),
    ([], "is serial: give --serial rs485-1=DEVICE"),
])
def test_bad_options_are_one_line_exit_2(tmp_path: Path, extra: list[str], words: str) -> None:
    cfg = rtu_config(tmp_path, "/dev/ttyS9")
    res = run_kemon("sim", "-c", str(cfg), *extra)
    assert res.returncode == 2
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_port_in_use_is_one_line_exit_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "g.toml"
        cfg.write_text(f"""
[gateway]
id = "S"
unit = "{UNIT}"
data_dir = "data"
[[bus]]
name = "lan"
kind = "modbus-tcp"
host = "127.0.0.1"
port = {port}
[[meter]]
name = "m"
bus = "lan"
address = 1
profile = "sdm630"
""", encoding="utf-8")
        res = run_kemon("sim", "-c", str(cfg), timeout=30)
    assert res.returncode == 1
    assert "address already in use" in res.stderr
    assert "Traceback" not in res.stderr
