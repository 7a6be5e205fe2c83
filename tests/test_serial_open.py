"""Opening serial ports: off the event loop, with a deadline, and reopening a pseudo-terminal
with the line settings an earlier run left on it (the frozen gateway restarts after kill -9:
a pty refused DL/T 645's even parity on the second open, the bus task died, and a Modbus task
that swallowed its cancellation kept the gateway alive but deaf)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import serial

from gateway._model import BusConfig
from gateway.drivers import _modbus
from gateway.drivers._dlt645 import Dlt645Driver
from gateway.drivers._modbus import ModbusDriver
from gateway.drivers._port_open import effective_parity, is_pseudo_terminal, open_off_loop

from .conftest import ROOT

# ---- the helper ------------------------------------------------------------------------------


async def _ticks_while(coro_done: asyncio.Event) -> int:
    """Count 10 ms loop ticks until ``coro_done`` is set: a blocked loop counts none."""
    n = 0
    while not coro_done.is_set():
        await asyncio.sleep(0.01)
        n += 1
    return n


def test_a_stuck_open_does_not_block_the_loop_and_a_late_port_is_discarded() -> None:
    release = threading.Event()
    discarded: list[str] = []
    opener_threads: list[threading.Thread] = []

    def stuck_open() -> str:
        opener_threads.append(threading.current_thread())
        release.wait(10)
        return "port"

    async def main() -> None:
        done = asyncio.Event()
        ticker = asyncio.create_task(_ticks_while(done))
        started = time.monotonic()
        with pytest.raises(OSError, match=r"did not finish within 0\.3 s"):
            await open_off_loop(stuck_open, discarded.append, deadline=0.3, what="t")
        elapsed = time.monotonic() - started
        done.set()
        assert 0.3 <= elapsed < 2.0
        assert await ticker >= 10             # the loop ran all along
        release.set()                         # the open finishes after all ...
        for _ in range(200):
            if discarded:
                break
            await asyncio.sleep(0.01)
        assert discarded == ["port"]          # ... and its port is closed, not leaked

    asyncio.run(main())
    assert opener_threads[0] is not threading.main_thread()
    assert opener_threads[0].daemon           # a stuck opener cannot hold up the exit


def test_cancelled_while_opening_discards_the_port() -> None:
    release = threading.Event()
    discarded: list[str] = []

    def slow_open() -> str:
        release.wait(10)
        return "port"

    async def main() -> None:
        task = asyncio.create_task(open_off_loop(slow_open, discarded.append, deadline=5,
                                                 what="t"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        for _ in range(200):
            if discarded:
                break
            await asyncio.sleep(0.01)
        assert discarded == ["port"]

    asyncio.run(main())


def test_opener_errors_reach_the_caller_and_termios_errors_become_oserrors() -> None:
    def refused() -> str:
        raise termios.error(22, "Invalid argument")

    def missing() -> str:
        raise serial.SerialException(2, "could not open port")

    async def main() -> None:
        with pytest.raises(OSError, match="line settings refused") as exc:
            await open_off_loop(refused, lambda _: None, deadline=5, what="t")
        assert exc.value.errno == 22
        with pytest.raises(serial.SerialException, match="could not open port"):
            await open_off_loop(missing, lambda _: None, deadline=5, what="t")

    asyncio.run(main())


def test_ptys_are_recognised_and_opened_without_parity(pty_pair: tuple[str, str],
                                                       tmp_path: Path) -> None:
    a, _ = pty_pair
    plain = tmp_path / "plain"
    plain.write_text("")
    assert is_pseudo_terminal(a) and not is_pseudo_terminal(str(plain))
    assert effective_parity(a, "E") == "N"
    assert effective_parity(str(plain), "E") == "E"
    assert effective_parity("/dev/ttyUSB7", "O") == "O"


_STUCK_OPENS = """
import asyncio, threading, serial
from gateway._model import BusConfig
from gateway.drivers._dlt645 import Dlt645Driver
from gateway.drivers._modbus import ModbusDriver

def never_returns(*args, **kw):
    threading.Event().wait()

serial.Serial.__init__ = never_returns
serial.serial_for_url = never_returns

async def main():
    for driver in (Dlt645Driver(BusConfig(name="d", kind="dlt645", port="/dev/null")),
                   ModbusDriver(BusConfig(name="m", kind="modbus-rtu", port="/dev/null"))):
        try:
            await driver.connect()
        except OSError as exc:
            print(exc)

asyncio.run(main())
"""


def test_stuck_opens_do_not_keep_the_process_from_exiting() -> None:
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-c", _STUCK_OPENS], capture_output=True, text=True,
                         timeout=20, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("opening did not finish within 2 s") == 2, res.stdout
    assert time.monotonic() - started < 15


# ---- reopening a pty with parity (the cause of the frozen restarts) ---------------------------


def test_dlt645_bus_reopens_a_pty_an_earlier_open_left_at_its_speed(
        pty_pair: tuple[str, str]) -> None:
    a, _ = pty_pair
    bus = BusConfig(name="b", kind="dlt645", port=a, baudrate=2400, parity="E", timeout=0.3)

    async def main() -> None:
        for _ in range(3):           # the 2nd open is the one the platform used to refuse
            driver = Dlt645Driver(bus)
            await driver.connect()
            await driver.close()

    asyncio.run(main())


def test_modbus_rtu_bus_reopens_a_pty_off_the_loop(pty_pair: tuple[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = pty_pair
    bus = BusConfig(name="b", kind="modbus-rtu", port=a, baudrate=19200, parity="E",
                    timeout=0.3)
    opened_in: list[threading.Thread] = []
    real_serial_for_url = serial.serial_for_url

    def spy(*args: object, **kw: object) -> serial.Serial:
        opened_in.append(threading.current_thread())
        return real_serial_for_url(*args, **kw)

    monkeypatch.setattr(serial, "serial_for_url", spy)

    async def main() -> None:
        for _ in range(3):
            driver = ModbusDriver(bus)
            await driver.connect()
            assert driver._client is not None and driver._client.connected
            await driver.close()

    asyncio.run(main())
    assert len(opened_in) == 3
    assert threading.main_thread() not in opened_in      # pymodbus opened it off the loop


def test_modbus_rtu_open_failure_is_a_connection_error(tmp_path: Path) -> None:
    bus = BusConfig(name="b", kind="modbus-rtu", port=str(tmp_path / "none"), timeout=0.2)

    async def main() -> None:
        driver = ModbusDriver(bus)
        with pytest.raises(ConnectionError, match="cannot open"):
            await driver.connect()
        await driver.close()

    asyncio.run(main())


def test_a_cancellation_that_wait_for_dropped_is_raised_again() -> None:
    """Python 3.11's wait_for returns a result that arrives together with a cancellation
    (CPython gh-86296): the driver's check after each pymodbus call stops the task anyway."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[int] = loop.create_future()
        got: list[int] = []

        async def transaction() -> None:
            got.append(await asyncio.wait_for(answer, 5))
            _modbus._raise_dropped_cancel()
            await asyncio.sleep(10)          # the bus loop going on as if not cancelled

        task = asyncio.create_task(transaction())
        await asyncio.sleep(0.01)
        answer.set_result(7)                 # the answer and the cancellation together
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2)
        assert task.cancelled()

    asyncio.run(main())
