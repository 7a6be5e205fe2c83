"""``kemon collector readings | status | check | run`` over a real store: SQLite, and a real
PostgreSQL (tests/pg.py), filled through ``collector._storage`` with really sealed batches.

Exit codes and one-line errors are checked on real ``kemon`` processes; the output of the
reading commands in-process (click's runner), which is the same code and much faster.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from collector._cli import COLUMNS, display_width
from collector._records import GatewayStatus, Quarantined, VerifiedBatch
from collector._schema import PERIOD_CODES
from collector._storage import open_storage
from kemon.cli import cli
from protocol import (
    ZERO_HASH,
    Batch,
    Period,
    Reading,
    batch_hash,
    make_credit_code,
    seal,
    to_rfc3339,
)
from provisioning import make_ca, make_collector_cert, write_cert, write_key

from .brokers import Broker, MqttClient, Pki
from .conftest import kemon_cmd, run_kemon

UNIT = "91320100MA1ABCDE0C"
UNIT2 = make_credit_code("320200", "MA1BCD01")
T0 = 1_789_999_200_000          # 2026-09-21 22:00 CST, on the 15-minute grid
MIN = 60_000
KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
P1, P2 = "0000000001000001", "0000000001000002"


@dataclass(frozen=True)
class Row:
    """One reading as the tests expect it back."""

    unit: str
    gateway: str
    point: str
    period: str
    ts: int
    value: float
    quality: str = "good"

    def json(self) -> dict[str, object]:
        return {"unit": self.unit, "gateway": self.gateway, "point": self.point,
                "period": self.period, "ts": to_rfc3339(self.ts), "value": self.value,
                "quality": self.quality}

    def order(self) -> tuple[int, str, str, str, int]:
        return (self.ts, self.unit, self.gateway, self.point, PERIOD_CODES[self.period])


def sealed(unit: str, gateway: str, seq: int, rows: Sequence[Row]) -> VerifiedBatch:
    readings = tuple(Reading(r.point, Period(r.period), r.ts, r.value, r.quality) for r in rows)
    batch = Batch(unit, gateway, seq, ZERO_HASH, "data", T0, readings, None)
    payload = seal(batch, KEY)
    return VerifiedBatch(batch, payload, batch_hash(payload), T0 + seq * 1000)


# GW0001 of UNIT: instant and 15-minute readings, seqs 1, 2 and 4 (3 is missing);
# GW0002 of UNIT2: seq 1 only
BATCHES: list[tuple[str, str, int, list[Row]]] = [
    (UNIT, "GW0001", 1, [Row(UNIT, "GW0001", p, "instant", T0 + i * MIN, 10.0 + i, q)
                         for i in range(3) for p, q in ((P1, "good"), (P2, "comm_error"))]),
    (UNIT, "GW0001", 2, [Row(UNIT, "GW0001", P1, "15min", T0 + i * 15 * MIN, 2.5 * i)
                         for i in range(2)]),
    (UNIT, "GW0001", 4, [Row(UNIT, "GW0001", P1, "day", T0 - 22 * 60 * MIN, 240.0)]),
    (UNIT2, "GW0002", 1, [Row(UNIT2, "GW0002", P1, "instant", T0 + i * MIN, 7.0)
                          for i in range(2)]),
]
ALL = sorted((r for *_, rows in BATCHES for r in rows), key=Row.order)


def fill(url: str) -> None:
    storage = open_storage(url)
    try:
        quarantined = [
            Quarantined(f"kemon/v1/{UNIT2}/GW0002/up/data", "signature does not verify",
                        "signature", b"\x00forged", T0 + 5000, UNIT2, "GW0002", 2),
            Quarantined("kemon/v1/x/y/up/data", "not a batch", "format", b"junk", T0 + 6000),
        ]
        storage.store([sealed(*b) for b in BATCHES], quarantined)
        storage.record_status(GatewayStatus(UNIT, "GW0001", "online", T0 + 10_000,
                                            version="1.2.3"))
        storage.record_status(GatewayStatus(UNIT2, "GW0002", "offline", T0 + 20_000))
    finally:
        storage.close()


@pytest.fixture(scope="module")
def ca_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca = make_ca("Kemon Test CA")
    key, cert = make_collector_cert(ca_key, ca, "js1")
    write_cert(d / "ca.pem", ca)
    write_cert(d / "collector.pem", cert)
    write_key(d / "collector.key", key)
    return d


ConfigWriter = Callable[[str], Path]


@pytest.fixture
def write_config(tmp_path: Path, ca_files: Path) -> ConfigWriter:
    """Write collector.toml for ``database`` (trusting the test CA; an insecure test broker)."""

    def write(database: str) -> Path:
        path = tmp_path / "collector.toml"
        path.write_text(f"""
[collector]
role = "province"
region = "320000"
database = "{database}"
trusted_ca = "{ca_files / 'ca.pem'}"

[broker]
url = "mqtt://127.0.0.1:1883"
insecure = true
cert_file = "{ca_files / 'collector.pem'}"
key_file = "{ca_files / 'collector.key'}"
""", encoding="utf-8")
        return path

    return write


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/db/collector.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def filled(db_url: str, write_config: ConfigWriter) -> Path:
    """A configuration whose database holds :data:`BATCHES`."""
    fill(db_url)
    return write_config(db_url)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def one_line_error(result: subprocess.CompletedProcess[str] | Result, code: int) -> str:
    """The single stderr line of a command that exited ``code``."""
    exit_code = (result.returncode if isinstance(result, subprocess.CompletedProcess)
                 else result.exit_code)
    assert exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ---------------------------------------------------------------- readings

def test_readings_prints_every_reading_as_contract_json_lines(filled: Path) -> None:
    result = invoke("collector", "readings", "-c", str(filled))
    assert result.exit_code == 0, result.stderr
    lines = json_lines(result.stdout)
    assert lines == [r.json() for r in ALL]
    assert all(list(line) == ["unit", "gateway", "point", "period", "ts", "value", "quality"]
               for line in lines)
    assert lines[0]["ts"] == "2026-09-21T00:00:00+08:00"      # the day reading comes first


FILTERS: list[tuple[list[str], Callable[[Row], bool]]] = [
    (["--unit", UNIT2], lambda r: r.unit == UNIT2),
    (["--gateway", "GW0001"], lambda r: r.gateway == "GW0001"),
    (["--point", P2], lambda r: r.point == P2),
    (["--period", "15min"], lambda r: r.period == "15min"),
    (["--period", "day"], lambda r: r.period == "day"),
    (["--since", "2026-09-21T22:01:00+08:00"], lambda r: r.ts >= T0 + MIN),
    (["--until", "2026-09-21T22:01:00"], lambda r: r.ts < T0 + MIN),     # CST without offset
    (["--since", "2026-09-21T14:00:00Z", "--until", "2026-09-21T22:02:00+08:00",
      "--gateway", "GW0001", "--period", "instant"],
     lambda r: T0 <= r.ts < T0 + 2 * MIN and r.gateway == "GW0001" and r.period == "instant"),
    (["--unit", UNIT, "--gateway", "GW0002"], lambda r: False),
]


@pytest.mark.parametrize(("args", "keep"), FILTERS, ids=[" ".join(a) for a, _ in FILTERS])
def test_readings_filters(filled: Path, args: list[str], keep: Callable[[Row], bool]) -> None:
    result = invoke("collector", "readings", "-c", str(filled), *args)
    assert result.exit_code == 0, result.stderr
    expected = [r.json() for r in ALL if keep(r)]
    assert json_lines(result.stdout) == expected
    assert expected or args[-1] == "GW0002"      # each filter but the last selects something


def test_readings_limit(filled: Path) -> None:
    result = invoke("collector", "readings", "-c", str(filled), "--unit", UNIT, "--limit", "3")
    assert json_lines(result.stdout) == [r.json() for r in ALL if r.unit == UNIT][:3]


@pytest.mark.parametrize("args", [
    ["--since", "yesterday"], ["--until", "2026-13-01"], ["--since", ""],
    ["--period", "week"], ["--limit", "0"], ["--limit", "x"], ["--bogus"],
])
def test_bad_option_exits_2(tmp_path: Path, write_config: ConfigWriter,
                            args: list[str]) -> None:
    path = write_config(f"sqlite:///{tmp_path}/collector.db")
    result = run_kemon("collector", "readings", "-c", str(path), *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    if args[0] in ("--since", "--until"):
        assert one_line_error(result, 2).startswith(f"error: {args[0]}: ")
    assert result.stdout == ""


def test_readings_of_a_database_not_created_yet_exit_1(tmp_path: Path,
                                                       write_config: ConfigWriter) -> None:
    db = tmp_path / "never" / "collector.db"
    path = write_config(f"sqlite://{db}")
    for command in ("readings", "status"):
        line = one_line_error(run_kemon("collector", command, "-c", str(path)), 1)
        assert f"no database at {db}" in line
    assert not db.parent.exists()        # reading never creates a database


def test_unreachable_postgresql_exits_1_with_one_line(write_config: ConfigWriter) -> None:
    path = write_config(f"postgresql://kemon:hunter2@127.0.0.1:{closed_port()}/kemon")
    for command in ("readings", "status", "check"):
        result = run_kemon("collector", command, "-c", str(path))
        line = one_line_error(result, 1)
        assert "127.0.0.1" in line and "hunter2" not in line


def test_readings_while_a_collector_writes(tmp_path: Path, write_config: ConfigWriter) -> None:
    url = f"sqlite:///{tmp_path}/collector.db"
    path = write_config(url)
    writer = open_storage(url)
    try:
        writer.store([sealed(*BATCHES[0])])
        first = run_kemon("collector", "readings", "-c", str(path))
        assert first.returncode == 0, first.stderr
        assert len(first.stdout.splitlines()) == len(BATCHES[0][3])
        writer.store([sealed(*BATCHES[1])])
        second = run_kemon("collector", "readings", "-c", str(path), "--period", "15min")
        assert json_lines(second.stdout) == [r.json() for r in BATCHES[1][3]]
    finally:
        writer.close()


def test_readings_into_a_closed_pipe_stops_quietly(tmp_path: Path,
                                                   write_config: ConfigWriter) -> None:
    url = f"sqlite:///{tmp_path}/collector.db"
    rows = [Row(UNIT, "GW0001", f"{i:016d}", "instant", T0, float(i)) for i in range(5000)]
    storage = open_storage(url)
    try:
        storage.store([sealed(UNIT, "GW0001", 1, rows)])
    finally:
        storage.close()
    with subprocess.Popen(kemon_cmd("collector", "readings", "-c", str(write_config(url))),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            assert json.loads(proc.stdout.readline())["point"] == "0000000000000000"
            proc.stdout.close()          # like `| head -1`
            assert proc.wait(timeout=30) == 0
            assert proc.stderr.read() == b""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------- status

def test_status_json(filled: Path) -> None:
    result = invoke("collector", "status", "-c", str(filled), "--json")
    assert result.exit_code == 0, result.stderr
    [line] = result.stdout.splitlines()
    doc = json.loads(line)
    assert list(doc) == ["gateways", "quarantine", "relays"]
    assert doc["relays"] == []                     # no [[upstream]] configured
    assert doc["quarantine"] == {"format": 1, "signature": 1}
    assert doc["gateways"] == [
        {"unit": UNIT, "gateway": "GW0001", "version": "1.2.3",
         "last_seen": "2026-09-21T22:00:10+08:00", "status": "online", "last_seq": 4,
         "gaps": 1, "batches": 3, "readings": 9, "quarantined": 0},
        {"unit": UNIT2, "gateway": "GW0002", "version": None,
         "last_seen": "2026-09-21T22:00:20+08:00", "status": "offline", "last_seq": 1,
         "gaps": 0, "batches": 1, "readings": 2, "quarantined": 1},
    ]


def column_starts(line: str, cells: Sequence[str]) -> list[int]:
    """The display column where each of ``cells`` starts in ``line`` (searched in order)."""
    starts, pos = [], 0
    for cell in cells:
        pos = line.index(cell, pos)
        starts.append(display_width(line[:pos]))
        pos += len(cell)
    return starts


def test_status_table_is_aligned_with_chinese_and_english_headers(filled: Path) -> None:
    result = invoke("collector", "status", "-c", str(filled))
    assert result.exit_code == 0, result.stderr
    zh, en, gw1, gw2, summary = result.stdout.splitlines()
    assert zh.split() == [c[0] for c in COLUMNS]
    assert en.split("  ")[0] == "unit" and "last seen" in en and "quarantined" in en
    assert gw1.split() == [UNIT, "GW0001", "1.2.3", "2026-09-21", "22:00:10", "online",
                           "4", "1", "9", "0"]
    assert gw2.split() == [UNIT2, "GW0002", "-", "2026-09-21", "22:00:20", "offline",
                           "1", "0", "2", "1"]
    # left-aligned columns start together; right-aligned ones end together
    left = column_starts(zh, ["单位", "网关", "版本", "最后通信", "状态"])
    assert column_starts(en, ["unit", "gateway", "version", "last seen", "status"]) == left
    assert column_starts(gw1, [UNIT, "GW0001", "1.2.3", "2026-09-21", "online"]) == left
    assert column_starts(gw2, [UNIT2, "GW0002", "-", "2026-09-21", "offline"]) == left
    assert len({display_width(line) for line in (zh, en, gw1, gw2)}) == 1
    assert summary == ("2 gateways: 1 online, 1 offline, 0 unknown; missing seqs: 1; "
                       "quarantined: format 1, signature 1")


def test_status_of_an_empty_database(tmp_path: Path, write_config: ConfigWriter) -> None:
    url = f"sqlite:///{tmp_path}/collector.db"
    open_storage(url).close()
    path = write_config(url)
    table = invoke("collector", "status", "-c", str(path))
    assert table.exit_code == 0
    assert table.stdout.splitlines()[2] == ("0 gateways: 0 online, 0 offline, 0 unknown; "
                                            "missing seqs: 0; quarantined: none")
    as_json = invoke("collector", "status", "-c", str(path), "--json")
    assert json.loads(as_json.stdout) == {"gateways": [], "quarantine": {}, "relays": []}


def test_status_shows_what_each_upstream_has_not_acknowledged(filled: Path) -> None:
    with filled.open("a", encoding="utf-8") as f:
        f.write('\n[[upstream]]\nname = "national"\nurl = "mqtt://127.0.0.1:1884"\n'
                'insecure = true\n')
    doc = json.loads(invoke("collector", "status", "-c", str(filled), "--json").stdout)
    assert doc["relays"] == [{"upstream": "national", "cursor": 0, "pending": 4,
                              "updated": None}]
    assert invoke("collector", "status", "-c", str(filled)).stdout.splitlines()[-1] == (
        "relay to national (上报): 4 batches not yet acknowledged (cursor at batch id 0, "
        "last moved never)")
    url = tomllib.loads(filled.read_text(encoding="utf-8"))["collector"]["database"]
    storage = open_storage(url)
    try:
        second = storage.relay_batches_after("national", 0, 2)[-1].id
        storage.relay_ack("national", second)
    finally:
        storage.close()
    doc = json.loads(invoke("collector", "status", "-c", str(filled), "--json").stdout)
    [relay] = doc["relays"]
    assert (relay["cursor"], relay["pending"]) == (second, 2)
    assert relay["updated"].endswith("+08:00")
    last = invoke("collector", "status", "-c", str(filled)).stdout.splitlines()[-1]
    assert f"2 batches not yet acknowledged (cursor at batch id {second}, last moved 20" in last


# ---------------------------------------------------------------- check and run

def test_check_good_configuration_opens_the_database(db_url: str,
                                                     write_config: ConfigWriter) -> None:
    path = write_config(db_url)
    result = run_kemon("collector", "check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == ("ok: province collector, region 320000; broker mqtt://127.0.0.1:1883 "
                      "(share group collectors); 0 upstreams")
    assert out[1] == "trusted CA: CN=Kemon Test CA"
    assert out[2].startswith("database: ") and out[2].endswith(": reachable, schema up to date")
    storage = open_storage(db_url)       # created and migrated: readable at once
    try:
        assert storage.gateways() == []
    finally:
        storage.close()


@pytest.fixture
def sqlite_config(tmp_path: Path, write_config: ConfigWriter) -> Path:
    return write_config(f"sqlite:///{tmp_path}/collector.db")


def test_check_refuses_a_trusted_ca_that_is_not_a_ca(sqlite_config: Path,
                                                     ca_files: Path) -> None:
    text = sqlite_config.read_text().replace(str(ca_files / "ca.pem"),
                                             str(ca_files / "collector.pem"), 1)
    sqlite_config.write_text(text)
    line = one_line_error(run_kemon("collector", "check", "-c", str(sqlite_config)), 2)
    assert f"{sqlite_config}: collector.trusted_ca: " in line and "is not a CA" in line


def test_check_refuses_a_key_that_is_not_the_certificates(sqlite_config: Path,
                                                          tmp_path: Path) -> None:
    other_key, _ = make_ca("Other")
    write_key(tmp_path / "other.key", other_key)
    text = sqlite_config.read_text()
    start = text.index('key_file = "')
    sqlite_config.write_text(text[:start] + f'key_file = "{tmp_path / "other.key"}"\n')
    line = one_line_error(run_kemon("collector", "check", "-c", str(sqlite_config)), 2)
    assert f"{sqlite_config}: broker.key_file: " in line and "is not the key of" in line


def test_check_refuses_a_file_that_is_no_certificate(sqlite_config: Path,
                                                     tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_bytes(b"\x00\xffjunk")
    text = sqlite_config.read_text()
    start = text.index("trusted_ca = ")
    end = text.index("\n", start)
    sqlite_config.write_text(text[:start] + f'trusted_ca = "{tmp_path / "junk.pem"}"'
                             + text[end:])
    line = one_line_error(run_kemon("collector", "check", "-c", str(sqlite_config)), 2)
    assert "collector.trusted_ca" in line and "no PEM certificate" in line


@pytest.mark.parametrize("command", ["check", "run", "readings", "status"])
def test_bad_configuration_exits_2_naming_file_and_key(tmp_path: Path, command: str) -> None:
    path = tmp_path / "collector.toml"
    path.write_text('[collector]\nrole = "county"\n', encoding="utf-8")
    line = one_line_error(run_kemon("collector", command, "-c", str(path)), 2)
    assert line.startswith(f"error: {path}: collector.role: ")
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    line = one_line_error(run_kemon("collector", command, "-c", str(path)), 2)
    assert "not UTF-8" in line


def test_missing_config_option_is_usage_exit_2() -> None:
    result = run_kemon("collector", "readings")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "-c" in result.stderr


def test_a_file_that_is_not_a_database_exits_1(tmp_path: Path,
                                               write_config: ConfigWriter) -> None:
    db = tmp_path / "collector.db"
    db.write_bytes(b"this is not an SQLite database, just text " * 100)
    path = write_config(f"sqlite://{db}")
    for command in ("readings", "status", "check", "run"):
        line = one_line_error(run_kemon("collector", command, "-c", str(path)), 1)
        assert str(db) in line, line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_stores_what_a_gateway_sends_and_stops_cleanly_on_a_signal(broker: Broker, pki: Pki,
                                                            tmp_path: Path,
                                                            sig: signal.Signals) -> None:
    col = pki.collector()
    db = tmp_path / "collector.db"
    path = tmp_path / "collector.toml"
    path.write_text(f"""
[collector]
role = "province"
region = "320000"
database = "sqlite:collector.db"

[broker]
url = "{broker.url}"
ca_file = "{pki.ca_path}"
cert_file = "{col.cert_path}"
key_file = "{col.key_path}"
client_id = "test-run-{sig.name}"
""", encoding="utf-8")
    err_path = tmp_path / "stderr.txt"
    with err_path.open("wb") as err, \
            subprocess.Popen(kemon_cmd("collector", "run", "-c", str(path)),
                             stdout=subprocess.DEVNULL, stderr=err) as proc:
        try:
            deadline = time.monotonic() + 20
            while "connected to" not in err_path.read_text():
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, err_path.read_text()
                time.sleep(0.05)
            gw = pki.gateway(UNIT, "GW0001")
            key = serialization.load_pem_private_key(gw.key_path.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            rows = BATCHES[0][3]
            batch = Batch(UNIT, "GW0001", 1, ZERO_HASH, "data", T0,
                          tuple(Reading(r.point, Period(r.period), r.ts, r.value, r.quality)
                                for r in rows), None)
            with MqttClient.connect(broker, gw) as client:
                client.publish(f"kemon/v1/{UNIT}/GW0001/up/status", json.dumps(
                    {"status": "online", "version": "9.9.9",
                     "certificate": gw.cert_path.read_text()}), retain=True)
                client.publish(f"kemon/v1/{UNIT}/GW0001/up/data", seal(batch, key))
            while json_lines(run_kemon("collector", "readings", "-c", str(path)).stdout) != [
                    r.json() for r in rows]:
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, err_path.read_text()
                time.sleep(0.1)
            proc.send_signal(sig)
            assert proc.wait(timeout=20) == 0, err_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = err_path.read_text()
    assert "Traceback" not in text and "stopped" in text
    status = run_kemon("collector", "status", "-c", str(path), "--json")
    assert status.returncode == 0, status.stderr
    [gateway] = json.loads(status.stdout)["gateways"]
    assert (gateway["unit"], gateway["gateway"], gateway["version"], gateway["status"],
            gateway["last_seq"], gateway["readings"]) == (UNIT, "GW0001", "9.9.9", "online",
                                                          1, len(rows))
    assert db.is_file()
