"""``kemon gateway …``: thin click commands over the gateway library.

Library errors become one line on stderr: configuration and input errors exit 2, runtime
failures exit 1 (CONTRACT.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from protocol import Period
from protocol._cli import BadInput, Failure, run_async, time_option

from ._config import load_config
from ._errors import ConfigError
from ._model import GatewayConfig
from ._sizing import estimate_store
from ._store import Store, StoreError

__all__ = ["gateway_group"]

log = logging.getLogger(__name__)


def _load(path: str) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


_config_option = click.option(
    "-c", "--config", "config_path", required=True, metavar="FILE",
    help="The gateway configuration (TOML).")


@click.group("gateway")
def gateway_group() -> None:
    """Run and inspect an edge gateway.

    \b
    Examples:
      kemon gateway check -c gateway.toml
      kemon gateway run -c gateway.toml
      kemon gateway readings -c gateway.toml --point incomer.import_kwh --period 15min
    """


@gateway_group.command("check")
@_config_option
def check_command(config_path: str) -> None:
    """Validate a configuration; exit 0 when it is good, 2 with the problem when not.

    \b
    Example:
      kemon gateway check -c /etc/kemon/gateway.toml
    """
    cfg = _load(config_path)
    if cfg.destinations:
        from ._delivery import IdentityError, load_identity

        try:
            load_identity(cfg.gateway.key_file, cfg.gateway.cert_file)
        except IdentityError as exc:
            raise BadInput(f"{cfg.source}: gateway identity: {exc}") from None
    points = sum(len(m.points) for m in cfg.meters)
    click.echo(f"ok: gateway {cfg.gateway.id} of unit {cfg.gateway.unit}: "
               f"{len(cfg.buses)} buses, {len(cfg.meters)} meters, {points} points, "
               f"{len(cfg.destinations)} destinations")
    size = estimate_store(cfg)
    mb = 1024 * 1024
    click.echo(f"store: about {size.full_per_day:,.0f} readings a day "
               f"({size.thinned_per_day:,.0f} after {cfg.store.full_resolution_days} days); "
               f"{cfg.store.retention_days} days need about {size.retention_bytes / mb:,.0f} MB "
               f"of the {cfg.store.disk_budget_mb:,} MB budget")
    if not size.fits:
        click.echo(f"warning: {cfg.source}: store.disk_budget_mb: {cfg.store.disk_budget_mb} MB "
                   f"holds only about {size.days_that_fit:.0f} days of history, not "
                   f"retention_days = {cfg.store.retention_days}; raise the budget to about "
                   f"{size.retention_bytes / mb * 1.1:,.0f} or lower full_resolution_days",
                   err=True)


@gateway_group.command("run")
@_config_option
def run_command(config_path: str) -> None:
    """Poll the meters and store readings until SIGTERM or SIGINT, then stop cleanly.

    \b
    Example:
      kemon gateway run -c /etc/kemon/gateway.toml
    """
    cfg = _load(config_path)
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    from ._runner import Gateway

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Gateway(cfg).run(stop)

    from ._delivery import IdentityError

    run_async(main(), StoreError, IdentityError)


@contextmanager
def _open_store(cfg: GatewayConfig) -> Iterator[Store]:

    path = cfg.gateway.data_dir / "store.db"
    if not path.exists():
        raise Failure(f"no store at {path}: the gateway has not run with this configuration")
    try:
        store = Store.open_readonly(path)
    except StoreError as exc:
        raise Failure(str(exc)) from None
    try:
        yield store
    finally:
        store.close()


@gateway_group.command("readings")
@_config_option
@click.option("--point", "point", metavar="CODE", help="Only this point code.")
@click.option("--period", type=click.Choice([p.value for p in Period]),
              help="Only this period (instant, 15min, hour, day, month).")
@time_option("--since", "From this time (RFC 3339; no offset means China Standard Time).")
@time_option("--until", "Before this time.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many readings.")
def readings_command(config_path: str, point: str | None, period: str | None,
                     since: int | None, until: int | None, limit: int | None) -> None:
    """Print stored readings as JSON lines, oldest first. Works while the gateway runs.

    \b
    Examples:
      kemon gateway readings -c gateway.toml --period day --since 2026-11-01
      kemon gateway readings -c gateway.toml --point incomer.import_kwh --limit 10
    """
    cfg = _load(config_path)
    out = sys.stdout
    with _open_store(cfg) as store:
        for r in store.query(point=point,
                             period=Period(period) if period else None,
                             since_ms=since, until_ms=until, limit=limit):
            out.write(json.dumps(r.to_json_dict(), ensure_ascii=False) + "\n")


@gateway_group.command("backlog")
@_config_option
def backlog_command(config_path: str) -> None:
    """Print one JSON object: for each destination, ``pending`` (sealed batches it has not
    acknowledged), ``acked_seq``, ``connected`` (as of the gateway's last cycle), and more.
    Works while the gateway runs.

    \b
    Example:
      kemon gateway backlog -c gateway.toml
      {"province": {"pending": 0, "acked_seq": 1234, "connected": true, ...}, ...}
    """
    import time

    cfg = _load(config_path)
    out: dict[str, Any] = {}
    path = cfg.gateway.data_dir / "store.db"
    state: dict[str, Any] = {}
    if path.exists():
        with _open_store(cfg) as store:
            state = {key: store.load_state(key)
                     for key in ("outbox.last", "uplinks")}
            cursors = {d.name: store.load_state(f"cursor.{d.name}")
                       for d in cfg.destinations}
    else:
        cursors = {}
    last_seq = int((state.get("outbox.last") or {}).get("seq", 0))
    uplinks = state.get("uplinks") or {}
    fresh_ms = max(120, 3 * min((m.interval for m in cfg.meters), default=60)) * 1000
    now = int(time.time() * 1000)
    for dest in cfg.destinations:
        acked = int(cursors.get(dest.name) or 0)
        seen = uplinks.get(dest.name) or {}
        live = now - int(seen.get("updated", 0)) <= fresh_ms
        out[dest.name] = {"pending": max(last_seq - acked, 0), "acked_seq": acked,
                          "connected": bool(live and seen.get("connected")),
                          "last_seq": last_seq, "last_error": seen.get("last_error"),
                          "url": dest.url}
    click.echo(json.dumps(out, ensure_ascii=False))


@gateway_group.command("meters")
@_config_option
def meters_command(config_path: str) -> None:
    """Print each meter's counters (requests, errors, timeouts, latency, last good read, online)
    as of the last cycle, one JSON object per line. Works while the gateway runs.

    \b
    Example:
      kemon gateway meters -c gateway.toml
    """
    cfg = _load(config_path)
    with _open_store(cfg) as store:
        state = store.load_state("meters") or {}
    for meter in cfg.meters:
        stats = state.get(meter.bus, {}).get(meter.name, {})
        click.echo(json.dumps({"meter": meter.name, "bus": meter.bus, **stats}))


@gateway_group.command("selftest")
@_config_option
@click.option("--report-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Where the JSON and HTML reports go (default: the data directory).")
@click.option("--timeout", "deadline", type=click.FloatRange(min=0.1, max=600), default=10.0,
              show_default=True, metavar="SECONDS", help="Deadline of each check.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of text.")
def selftest_command(config_path: str, report_dir: Path | None, deadline: float,
                     as_json: bool) -> None:
    """Commissioning self-test (调试自检): serial ports, every meter once (plausible values),
    clock synchronisation, disk space, the store, the certificate, and TLS + MQTT CONNECT to
    every destination. Prints the report (中文/English) and writes it as
    selftest-<gateway>-<UTC time>.json and .html. Exit 0 when no check failed, 1 otherwise.

    \b
    Example:
      kemon gateway selftest -c /etc/kemon/gateway.toml --report-dir /boot/kemon
    """
    from ._selftest import run_selftest, write_reports
    from ._selftest_report import render_json, render_text

    cfg = _load(config_path)
    click.echo(f"selftest: {len(cfg.buses)} buses, {len(cfg.meters)} meters, "
               f"{len(cfg.destinations)} destinations; at most {deadline:g} s per check …",
               err=True)
    report = asyncio.run(run_selftest(cfg, deadline=deadline))
    click.echo(render_json(report) if as_json else render_text(report), nl=False)
    where = report_dir if report_dir is not None else cfg.gateway.data_dir
    try:
        paths = write_reports(report, where)
    except OSError as exc:
        raise Failure(f"cannot write the report in {where}: {exc.strerror or exc}") from None
    click.echo("report: " + "  ".join(str(p) for p in paths), err=True)
    if not report.passed:
        sys.exit(1)
