"""``kemon sim``: simulated meters for every meter of a gateway configuration.

Each bus of the configuration becomes one simulator speaking its protocol: TCP buses listen on
the configured host and port; serial buses answer on a serial device — either one given with
``--serial BUS=DEVICE`` (the far end of a null-modem cable or socat pair), or, with
``--make-ports``, a socat pseudo-terminal pair created so that the configured ``port`` is the
gateway's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click

from protocol._cli import BadInput, run_async

from .._config import load_config
from .._errors import ConfigError
from .._model import BusConfig, GatewayConfig
from ._values import FAULTS, SimMeter

__all__ = ["serve_bus", "sim_command", "sim_meters"]

log = logging.getLogger(__name__)


def sim_meters(cfg: GatewayConfig, bus: BusConfig, faults: dict[str, str]) -> list[SimMeter]:
    return [SimMeter(address=m.address, points=m.points, fault=faults.get(m.name, "none"),
                     device_type=m.device_type)
            for m in cfg.meters if m.bus == bus.name]


def serve_bus(bus: BusConfig, meters: list[SimMeter], *, device: str | None = None,
              ready: asyncio.Event | None = None) -> Coroutine[Any, Any, None]:
    """The coroutine serving ``meters`` as ``bus`` describes (``device`` for serial buses)."""
    if bus.kind == "modbus-tcp":
        from ._modbus_sim import serve_modbus_tcp

        assert bus.host is not None and bus.tcp_port is not None
        return serve_modbus_tcp(meters, host=bus.host, port=bus.tcp_port, ready=ready)
    if bus.kind == "modbus-rtu":
        from ._modbus_sim import serve_modbus_rtu

        assert device is not None
        return serve_modbus_rtu(meters, device=device, ready=ready)
    serve: Callable[..., Coroutine[Any, Any, None]]
    if bus.kind == "dlt645":
        from ._dlt645_sim import serve_dlt645 as serve
    else:
        from ._cjt188_sim import serve_cjt188 as serve
    if bus.is_tcp:
        return serve(meters, host=bus.host, port=bus.tcp_port, ready=ready)
    return serve(meters, device=device, ready=ready)


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise BadInput(f"{item!r} is not {what}")
        out[name] = value
    return out


def _both_exist(*paths: str) -> bool:
    return all(os.path.exists(p) for p in paths)


async def _make_pty(link: str) -> tuple[asyncio.subprocess.Process, str]:
    """A socat pty pair: ``link`` for the gateway, ``link + '.sim'`` for the simulator."""
    if shutil.which("socat") is None:
        raise click.ClickException("--make-ports needs socat (apt-get install socat)")
    sim_end = link + ".sim"
    Path(link).parent.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        "socat", f"pty,raw,echo=0,link={link}", f"pty,raw,echo=0,link={sim_end}",
        stderr=subprocess.DEVNULL)
    for _ in range(100):
        if _both_exist(link, sim_end):
            return proc, sim_end
        await asyncio.sleep(0.05)
    proc.kill()
    raise click.ClickException(f"socat did not create {link}")


@click.command("sim")
@click.option("-c", "--config", "config_path", required=True, metavar="FILE",
              help="A gateway configuration whose meters are to be simulated.")
@click.option("--serial", "serial", multiple=True, metavar="BUS=DEVICE",
              help="Serve serial bus BUS on DEVICE (the far end of the link).")
@click.option("--make-ports", is_flag=True,
              help="Create a socat pty pair per serial bus: the configured port is the "
                   "gateway's end.")
@click.option("--fault", "fault", multiple=True, metavar="METER=MODE",
              help=f"Make METER misbehave: {', '.join(FAULTS)}.")
def sim_command(config_path: str, serial: tuple[str, ...], make_ports: bool,
                fault: tuple[str, ...]) -> None:
    """Simulate every meter of a gateway configuration until SIGTERM or SIGINT.

    Values are a known function of time (gateway/sim/_values.py), so what the gateway stores
    can be checked.

    \b
    Examples:
      kemon sim -c gateway.toml --make-ports
      kemon sim -c gateway.toml --serial rs485-1=/dev/ttyUSB1 --fault pump=silent
    """
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    devices = _pairs(serial, "BUS=DEVICE")
    faults = _pairs(fault, "METER=MODE")
    bus_names = {b.name for b in cfg.buses}
    for name in devices:
        if name not in bus_names:
            raise BadInput(f"--serial: no bus named {name!r}; "
                           f"buses: {', '.join(sorted(bus_names))}")
    meter_names = {m.name for m in cfg.meters}
    for name, mode in faults.items():
        if name not in meter_names:
            raise BadInput(f"--fault: no meter named {name!r}")
        if mode not in FAULTS:
            raise BadInput(f"--fault {name}: {mode!r} is not one of {', '.join(FAULTS)}")
    for bus in cfg.buses:
        if not bus.is_tcp and bus.name not in devices and not make_ports:
            raise BadInput(f"bus {bus.name!r} is serial: give --serial {bus.name}=DEVICE "
                                   "or --make-ports")
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    run_async(_serve_all(cfg, devices, faults, make_ports))


async def _serve_all(cfg: GatewayConfig, devices: dict[str, str], faults: dict[str, str],
                     make_ports: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    socats: list[asyncio.subprocess.Process] = []
    try:
        async with asyncio.TaskGroup() as tg:
            tasks: list[asyncio.Task[None]] = []
            for bus in cfg.buses:
                meters = sim_meters(cfg, bus, faults)
                if not meters:
                    continue
                device = devices.get(bus.name)
                if not bus.is_tcp and device is None:
                    assert bus.port is not None
                    proc, device = await _make_pty(bus.port)
                    socats.append(proc)
                ready = asyncio.Event()
                tasks.append(tg.create_task(serve_bus(bus, meters, device=device, ready=ready),
                                            name=f"kemon.sim[{bus.name}]"))
                await ready.wait()
                where = f"{bus.host}:{bus.tcp_port}" if bus.is_tcp else device
                click.echo(f"sim: bus {bus.name} ({bus.kind}) on {where}: "
                           + ", ".join(f"{m.address}" + (f" [{m.fault}]" if m.fault != "none"
                                                          else "") for m in meters), err=True)
            click.echo("sim: ready", err=True)
            await stop.wait()
            for task in tasks:
                task.cancel()
    finally:
        for proc in socats:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await proc.wait()
