"""``kemon collector …``: thin click commands over the collector library.

Library errors become one line on stderr: bad usage, configuration or input exits 2, a runtime
failure (a database or broker that cannot be reached) exits 1 (CONTRACT.md). The read-only
commands (``readings``, ``status``) open the database beside a running collector: SQLite in WAL
mode lets them read while it writes, PostgreSQL is a server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import click

from protocol import Period, from_ms
from protocol._cli import BadInput, Failure, one_line, run_async, time_option

from ._config import ConfigError, load_config
from ._model import CollectorConfig
from ._storage import GatewayRow, Storage, StorageError, open_storage, redact_url, sqlite_path

__all__ = ["collector_group"]

log = logging.getLogger(__name__)


def _load(path: str) -> CollectorConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise BadInput(str(exc)) from None


@contextmanager
def _open_existing(cfg: CollectorConfig) -> Iterator[Storage]:
    """The configured database, for reading: a SQLite file must exist already (reading never
    creates one); any failure to open it is exit 1."""
    url = cfg.collector.database
    if url.startswith("sqlite:"):
        path = sqlite_path(url)
        if not path.is_file():
            raise Failure(f"no database at {path}: the collector has not run with "
                          f"{cfg.source}")
    try:
        storage = open_storage(url)
    except StorageError as exc:
        raise Failure(one_line(exc)) from None
    try:
        yield storage
    finally:
        storage.close()


_config_option = click.option(
    "-c", "--config", "config_path", required=True, metavar="FILE",
    help="The collector configuration (TOML).")


@click.group("collector")
def collector_group() -> None:
    """Run and inspect a collector (province or national).

    \b
    Examples:
      kemon collector check -c collector.toml
      kemon collector run -c collector.toml
      kemon collector status -c collector.toml
      kemon collector readings -c collector.toml --unit 91320100MA1ABCDE0C --period 15min
    """


# ---------------------------------------------------------------- check

def _check_certificates(cfg: CollectorConfig) -> list[str]:
    """Parse the trusted CAs and this collector's identities; BadInput (located) when one is
    not what it must be. Returns the trusted CAs' subjects."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    where = f"{cfg.source}: collector.trusted_ca"
    subjects: list[str] = []
    for path in cfg.collector.trusted_ca:
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise BadInput(f"{where}: {path} holds no PEM certificate ({one_line(exc)})"
                           ) from None
        for cert in certs:
            try:
                is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                is_ca = False
            if not is_ca:
                raise BadInput(f"{where}: {path}: {cert.subject.rfc4514_string()} is not a CA "
                               "certificate (basicConstraints CA:TRUE)")
            subjects.append(cert.subject.rfc4514_string())
    identities = [("broker", cfg.broker.cert_file, cfg.broker.key_file)]
    identities += [(f"upstream[{i}]", u.cert_file, u.key_file)
                   for i, u in enumerate(cfg.upstreams)]
    for key, cert_file, key_file in identities:
        if cert_file is None or key_file is None:
            continue
        try:
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        except (OSError, ValueError) as exc:
            raise BadInput(f"{cfg.source}: {key}.cert_file: {cert_file} is not a PEM "
                           f"certificate ({one_line(exc)})") from None
        try:
            private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise BadInput(f"{cfg.source}: {key}.key_file: {key_file} is not an unencrypted "
                           f"PEM private key ({one_line(exc)})") from None
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        pem = serialization.Encoding.PEM
        if private.public_key().public_bytes(pem, spki) != cert.public_key().public_bytes(
                pem, spki):
            raise BadInput(f"{cfg.source}: {key}.key_file: {key_file} is not the key of "
                           f"{cert_file}")
    return subjects


@collector_group.command("check")
@_config_option
def check_command(config_path: str) -> None:
    """Validate a configuration (exit 0, or 2 naming the file and key), then open the database
    (exit 1 when it cannot be reached; a new one is created and migrated).

    \b
    Example:
      kemon collector check -c /etc/kemon/collector.toml
      ok: province collector, region 320000; broker mqtts://10.0.0.5:8883 (share
      group collectors); 1 upstream: national
      trusted CA: CN=Kemon Jiangsu CA
      database: sqlite:///var/lib/kemon/collector.db: reachable, schema up to date
    """
    cfg = _load(config_path)
    subjects = _check_certificates(cfg)
    c = cfg.collector
    names = ", ".join(u.name for u in cfg.upstreams)
    upstreams = f"{len(cfg.upstreams)} upstream{'s' if len(cfg.upstreams) != 1 else ''}"
    click.echo(f"ok: {c.role} collector" + (f", region {c.region}" if c.region else "")
               + f"; broker {cfg.broker.url} (share group {cfg.broker.share_group}); "
               + upstreams + (f": {names}" if names else ""))
    for subject in subjects:
        click.echo(f"trusted CA: {subject}")
    try:
        storage = open_storage(c.database)
    except StorageError as exc:
        raise Failure(one_line(exc)) from None
    storage.close()
    click.echo(f"database: {redact_url(c.database)}: reachable, schema up to date")


# ---------------------------------------------------------------- run

@collector_group.command("run")
@_config_option
def run_command(config_path: str) -> None:
    """Subscribe, verify, store and relay until SIGTERM or SIGINT, then stop cleanly (exit 0).
    A database or broker that cannot be used is one line and exit 1.

    \b
    Example:
      kemon collector run -c /etc/kemon/collector.toml
    """
    cfg = _load(config_path)
    _check_certificates(cfg)
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    from ._ingest import run_collector, tune_gc_for_ingest
    from ._mqtt import LinkError

    tune_gc_for_ingest()      # fewer collections while verifying: see its docstring

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_collector(cfg, stop)

    # run_collector's documented failures: StorageError (a database that cannot be used; one
    # that is only unavailable is waited out), ValueError/OSError (unusable certificates, which
    # _check_certificates has already refused with exit 2), LinkError (the broker)
    run_async(main(), OSError, StorageError, LinkError, ValueError)


# ---------------------------------------------------------------- readings

@collector_group.command("readings")
@_config_option
@click.option("--unit", metavar="U", help="Only this unit (unified social credit code).")
@click.option("--gateway", metavar="G", help="Only this gateway id.")
@click.option("--point", metavar="CODE", help="Only this point code.")
@click.option("--period", type=click.Choice([p.value for p in Period]),
              help="Only this period (instant, 15min, hour, day, month).")
@time_option("--since", "From this time (RFC 3339; no offset means China Standard Time).")
@time_option("--until", "Before this time.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many readings.")
def readings_command(config_path: str, unit: str | None, gateway: str | None,
                     point: str | None, period: str | None, since: int | None,
                     until: int | None, limit: int | None) -> None:
    """Print stored readings as JSON lines, oldest first, with their unit and gateway.
    Works while the collector runs.

    \b
    Examples:
      kemon collector readings -c collector.toml --unit 91320100MA1ABCDE0C --since 2026-11-27
      kemon collector readings -c collector.toml --gateway GW0001 --period 15min --limit 96
      {"unit": "91320100MA1ABCDE0C", "gateway": "GW0001", "point": "0000000001000001",
       "period": "15min", "ts": "2026-11-27T08:00:00+08:00", "value": 12.5, "quality": "good"}
    """
    cfg = _load(config_path)
    out = sys.stdout
    with _open_existing(cfg) as storage:
        try:
            for r in storage.readings(unit=unit, gateway=gateway, point=point, period=period,
                                      since_ms=since, until_ms=until, limit=limit):
                out.write(json.dumps(r.to_json_dict(), ensure_ascii=False) + "\n")
            out.flush()
        except StorageError as exc:
            raise Failure(one_line(exc)) from None
        except BrokenPipeError:
            # the reader went away (``| head``): stop quietly, and keep Python from
            # complaining when it flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())


# ---------------------------------------------------------------- status

# (Chinese header, English header, right-aligned)
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("单位", "unit", False),
    ("网关", "gateway", False),
    ("版本", "version", False),
    ("最后通信", "last seen", False),
    ("状态", "status", False),
    ("最新序号", "last seq", True),
    ("缺号", "gaps", True),
    ("读数", "readings", True),
    ("隔离", "quarantined", True),
)


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: East Asian wide and fullwidth characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * (width - display_width(text))
    return fill + text if right else text + fill


def _cells(row: GatewayRow) -> list[str]:
    seen = "-" if row.last_seen is None else from_ms(row.last_seen).strftime("%Y-%m-%d %H:%M:%S")
    return [row.unit, row.gateway, row.version or "-", seen, row.status,
            "-" if row.last_seq is None else str(row.last_seq), str(row.gaps),
            str(row.readings), str(row.quarantined)]


def format_table(rows: Sequence[GatewayRow]) -> list[str]:
    """The inventory as aligned text lines: two header lines (Chinese, then English) and one
    line per gateway; times in China Standard Time."""
    table = [[zh for zh, _, _ in COLUMNS], [en for _, en, _ in COLUMNS],
             *(_cells(r) for r in rows)]
    widths = [max(display_width(line[i]) for line in table) for i in range(len(COLUMNS))]
    return ["  ".join(_pad(cell, widths[i], COLUMNS[i][2]) for i, cell in enumerate(line)
                      ).rstrip()
            for line in table]


def _summary(rows: Sequence[GatewayRow], quarantine: dict[str, int]) -> str:
    by_status = {s: sum(1 for r in rows if r.status == s) for s in ("online", "offline",
                                                                    "unknown")}
    held = ", ".join(f"{kind} {n}" for kind, n in sorted(quarantine.items())) or "none"
    return (f"{len(rows)} gateway{'s' if len(rows) != 1 else ''}: "
            + ", ".join(f"{n} {s}" for s, n in by_status.items())
            + f"; missing seqs: {sum(r.gaps for r in rows)}; quarantined: {held}")


@collector_group.command("status")
@_config_option
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object instead: {"gateways": [...], "quarantine": {kind: count}, '
                   '"relays": [...]}.')
def status_command(config_path: str, as_json: bool) -> None:
    """Print the gateway inventory: unit, gateway, version, last seen (China Standard Time),
    online/offline, last seq, seqs missing, readings stored, messages quarantined; then the
    quarantine by kind and, per [[upstream]], the batches not yet relayed. Works while the
    collector runs.

    \b
    Example:
      kemon collector status -c collector.toml
      单位                网关     版本     最后通信             状态     最新序号  缺号  ...
      unit                gateway  version  last seen            status   last seq  gaps  ...
      91320100MA1ABCDE0C  GW0001   0.4.0    2026-11-27 08:15:02  online        412     0  ...
      1 gateway: 1 online, 0 offline, 0 unknown; missing seqs: 0; quarantined: none
      relay to national (上报): 0 batches not yet acknowledged (cursor at batch id 412, ...)
      kemon collector status -c collector.toml --json
    """
    cfg = _load(config_path)
    with _open_existing(cfg) as storage:
        try:
            rows = storage.gateways()
            quarantine = storage.quarantine_counts()
            relays = [storage.relay_backlog(u.name) for u in cfg.upstreams]
        except StorageError as exc:
            raise Failure(one_line(exc)) from None
    if as_json:
        click.echo(json.dumps({"gateways": [r.to_json_dict() for r in rows],
                               "quarantine": quarantine,
                               "relays": [r.to_json_dict() for r in relays]},
                              ensure_ascii=False))
        return
    for line in format_table(rows):
        click.echo(line)
    click.echo(_summary(rows, quarantine))
    for r in relays:
        when = "never" if r.updated is None else \
            from_ms(r.updated).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"relay to {r.upstream} (上报): {r.pending} batches not yet acknowledged "
                   f"(cursor at batch id {r.cursor}, last moved {when})")
