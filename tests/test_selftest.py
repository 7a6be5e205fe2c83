"""`kemon gateway selftest`: the pure judgements (plausible values, clock, certificate, disk,
rendering), then real runs against `kemon sim` (Modbus TCP on loopback, Modbus RTU and
DL/T 645 on socat pseudo-terminals) and a real Mosquitto with TLS and client certificates —
one passing run and one failing run per cause."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gateway._config import load_config
from gateway._model import PointConfig
from gateway._selftest import (
    ClockState,
    implausible,
    judge_certificate,
    judge_clock,
    judge_disk,
    run_selftest,
)
from gateway._selftest_report import (
    CheckResult,
    SelftestReport,
    Status,
    render_html,
    render_json,
    render_text,
)
from gateway.sim._values import point_constants
from provisioning import make_ca, make_client_cert

from .brokers import Broker, ClientFiles, Pki, free_port, make_pki
from .conftest import ROOT, UNIT, kemon_cmd, run_kemon

NOW = time.time()

# --- plausible values ---------------------------------------------------------------------


def point(**kw: Any) -> PointConfig:
    return PointConfig(code=kw.pop("code", "p"), **kw)


@pytest.mark.parametrize(("p", "value", "words"), [
    (point(unit="V"), 230.1, None),
    (point(unit="V"), -3.0, "outside the plausible 0 to 1.1e+06 V"),
    (point(unit="Hz"), 50.02, None),
    (point(unit="Hz"), 0.0, "outside the plausible 45 to 65 Hz"),
    (point(unit="kWh", counter=True), 12345.6, None),
    (point(unit="kWh", counter=True), -0.5, "a cumulative counter cannot be negative"),
    (point(unit="m³"), -1.0, "outside the plausible ≥ 0 m³"),
    (point(unit="kWh", counter=True, counter_max=1e6), 1e6, "at or above the counter's wrap"),
    (point(unit="kW"), math.nan, "NaN"),
    (point(unit="kW"), math.inf, "infinite"),
    (point(unit="kW"), -250.0, None),                       # export: power may be negative
    (point(key="pf", unit=""), 0.98, None),
    (point(key="pf", unit=""), 980.0, "outside the plausible -1 to 1"),
    (point(name="total power factor"), -1.5, "outside the plausible -1 to 1"),
    (point(unit="A", type="float32"), 2.4e-41, "word or byte order is probably wrong"),
    (point(unit="A", type="uint16"), 0.0, None),
    (point(unit="furlongs"), 1e30, None),                    # unknown unit: only finite
])
def test_implausible(p: PointConfig, value: float, words: str | None) -> None:
    reason = implausible(p, value)
    if words is None:
        assert reason is None
    else:
        assert reason is not None and words in reason, reason


# --- clock, certificate, disk -------------------------------------------------------------

def test_clock_synchronised_passes_with_its_error_estimate() -> None:
    status, detail, measured = judge_clock(
        ClockState(NOW, True, "adjtimex", max_error_s=0.0123, est_error_s=0.0004,
                   offset_s=-0.00002), require_sync=True)
    assert status is Status.PASS
    assert "synchronised (adjtimex)" in detail and "maximum 12.3 ms" in detail
    assert measured["max_error_ms"] == 12.3 and measured["synchronised"] is True


@pytest.mark.parametrize(("state", "require", "status", "words"), [
    (ClockState(NOW, False, "adjtimex"), True, Status.FAIL, "kernel reports it unsync"),
    (ClockState(NOW, None, "none"), True, Status.FAIL, "cannot tell"),
    (ClockState(NOW, False, "adjtimex"), False, Status.WARN, "require_time_sync = false"),
    (ClockState(86400.0, True, "adjtimex"), True, Status.FAIL, "reads 1970-01-02"),
    (ClockState(86400.0, False, "adjtimex"), False, Status.FAIL, "before 2020"),
])
def test_clock_failures(state: ClockState, require: bool, status: Status, words: str) -> None:
    got, detail, _ = judge_clock(state, require_sync=require)
    assert got is status and words in detail, detail


@pytest.fixture(scope="module")
def ca() -> Any:
    return make_ca("Selftest CA", not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=400))


@pytest.mark.parametrize(("begin", "end", "status", "words"), [
    (-10, 355, Status.PASS, "days left"),
    (-10, 20, Status.WARN, "renew it soon"),
    (-100, -2, Status.FAIL, "expired on"),
    (3, 300, Status.FAIL, "not valid yet"),
])
def test_certificate_validity(ca: Any, begin: int, end: int, status: Status,
                              words: str) -> None:
    now = dt.datetime.now(dt.UTC)
    _, cert = make_client_cert(ca[0], ca[1], f"{UNIT}/GW1",
                               not_before=now + dt.timedelta(days=begin),
                               not_after=now + dt.timedelta(days=end))
    got, detail, measured = judge_certificate(cert, now.timestamp())
    assert got is status and words in detail, detail
    assert measured["subject"] == f"{UNIT}/GW1"
    assert measured["not_after"].startswith(str((now + dt.timedelta(days=end)).date()))


def test_disk_judgement() -> None:
    mb = 1024 * 1024
    ok = judge_disk(500 * mb, 10 * mb, 100 * mb, 2048 * mb, 200.0, 200)
    assert ok[0] is Status.PASS and "500 MB free" in ok[1]
    full = judge_disk(50 * mb, 10 * mb, 100 * mb, 2048 * mb, 200.0, 200)
    assert full[0] is Status.FAIL and "90 MB more needed" in full[1]
    assert full[2]["still_needed_bytes"] == 90 * mb
    small = judge_disk(5000 * mb, 0, 4000 * mb, 2048 * mb, 120.0, 200)
    assert small[0] is Status.WARN and "only about 120 of retention_days = 200" in small[1]


# --- rendering ----------------------------------------------------------------------------

class Rows(HTMLParser):
    """Collects the report's check rows: id -> status, and every text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, str] = {}
        self.text: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        a = dict(attrs)
        if tag == "tr" and (a.get("id") or "").startswith("check-"):
            self.rows[str(a["id"])[len("check-"):]] = str(a.get("data-status"))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_html(text: str) -> Rows:
    rows = Rows()
    rows.feed(text)
    rows.close()
    return rows


def sample_report() -> SelftestReport:
    return SelftestReport(
        gateway="GW1", unit=UNIT, config="/etc/kemon/gateway.toml", host="pi", version="0.1.0",
        started=NOW, finished=NOW + 1.5, checks=(
            CheckResult("clock", "时钟同步", "Clock synchronised", Status.PASS, "synchronised"),
            CheckResult("meter.a<b>", "仪表 a<b>", "Meter a<b>", Status.FAIL,
                        'u1 = <script>alert("x")</script> & more',
                        {"values": {"u1": "1e+09 V"}, "bus": "rs485-1"}),
            CheckResult("certificate", "网关证书", "Gateway certificate", Status.WARN,
                        "renew it soon")))


def test_text_report_has_both_labels_and_the_verdict() -> None:
    text = render_text(sample_report())
    lines = text.splitlines()
    assert any(line.startswith("PASS 通过") and "时钟同步 Clock synchronised" in line
               for line in lines)
    assert any(line.startswith("FAIL 失败") and "仪表 a<b> Meter a<b>" in line for line in lines)
    assert "FAILED 未通过 — 1 passed 通过, 1 warnings 注意, 1 failed 失败" in text
    # details start in one column whatever the labels' scripts (a CJK character is 2 wide)
    import unicodedata

    def width(s: str) -> int:
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)

    starts = {width(line.split("  synchronised")[0]) for line in lines if "  synchronised" in line}
    starts |= {width(line.split("  u1 = ")[0]) for line in lines if "  u1 = " in line}
    assert len(starts) == 1


def test_html_is_escaped_self_contained_and_parses() -> None:
    page = render_html(sample_report())
    assert "<script>" not in page and "&lt;script&gt;" in page
    rows = parse_html(page)
    assert rows.rows == {"clock": "pass", "meter.a<b>": "fail", "certificate": "warn"}
    assert "script" not in rows.tags and "link" not in rows.tags and "img" not in rows.tags
    assert "http" not in page.lower().replace('http-equiv', '')   # no external asset
    assert "网关调试报告 Gateway commissioning report" in "".join(rows.text)


def test_json_report_round_trips() -> None:
    data = json.loads(render_json(sample_report()))
    assert data["passed"] is False and data["counts"] == {"pass": 1, "warn": 1, "fail": 1}
    assert data["checks"][1]["measured"]["values"] == {"u1": "1e+09 V"}
    assert data["started_cst"].endswith("+08:00") and data["started"].endswith("Z")


# --- the clock seam, in process -----------------------------------------------------------

def test_unsynced_clock_fails_the_selftest(tmp_path: Path) -> None:
    cfg_path = tmp_path / "g.toml"
    cfg_path.write_text(f'[gateway]\nid = "G"\nunit = "{UNIT}"\ndata_dir = "d"\n',
                        encoding="utf-8")
    cfg = load_config(cfg_path)

    def run(state: ClockState) -> SelftestReport:
        return asyncio.run(run_selftest(cfg, deadline=5, clock=lambda: state))

    good = run(ClockState(time.time(), True, "test", 0.01, 0.001, 0.0))
    assert {c.id: c.status for c in good.checks}["clock"] is Status.PASS
    assert good.passed                       # the certificate is only a warning: no destination
    bad = run(ClockState(time.time(), False, "test"))
    clock = next(c for c in bad.checks if c.id == "clock")
    assert clock.status is Status.FAIL and "not synchronised" in clock.detail
    assert not bad.passed


def test_a_hung_clock_source_costs_only_its_deadline(tmp_path: Path) -> None:
    cfg_path = tmp_path / "g.toml"
    cfg_path.write_text(f'[gateway]\nid = "G"\nunit = "{UNIT}"\ndata_dir = "d"\n',
                        encoding="utf-8")

    def hung() -> ClockState:
        time.sleep(3)
        return ClockState(time.time(), True, "late")

    started = time.monotonic()
    report = asyncio.run(run_selftest(load_config(cfg_path), deadline=0.5, clock=hung))
    assert time.monotonic() - started < 2
    clock = next(c for c in report.checks if c.id == "clock")
    assert clock.status is Status.FAIL and "no result within 0.5 s" in clock.detail
    assert next(c for c in report.checks if c.id == "store").status is Status.PASS


def test_the_store_check_beside_a_live_writer(tmp_path: Path) -> None:
    """An existing store is opened, checked and write-locked for a moment only: the writer
    (a running gateway) goes on appending; a writer holding the lock makes it a warning."""
    import sqlite3

    from gateway._store import Store
    from protocol import Period, Reading

    cfg_path = tmp_path / "g.toml"
    cfg_path.write_text(f'[gateway]\nid = "G"\nunit = "{UNIT}"\ndata_dir = "d"\n',
                        encoding="utf-8")
    cfg = load_config(cfg_path)
    synced = ClockState(time.time(), True, "test")

    def store_check() -> CheckResult:
        report = asyncio.run(run_selftest(cfg, deadline=5, clock=lambda: synced))
        return next(c for c in report.checks if c.id == "store")

    with Store(tmp_path / "d" / "store.db") as store:
        store.append_cycle([Reading("p", Period.INSTANT, 1_780_000_000_000, 1.0)])
        check = store_check()
        assert check.status is Status.PASS, check.detail
        assert "is a Kemon store and writable" in check.detail
        assert check.measured["last_reading_id"] == 1
        assert store.append_cycle([Reading("p", Period.INSTANT, 1_780_000_060_000, 2.0)]) == 1
        other = sqlite3.connect(tmp_path / "d" / "store.db", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")          # a writer in the middle of a cycle
            check = store_check()
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert check.status is Status.WARN and "held its write lock" in check.detail
        assert store.append_cycle([Reading("p", Period.INSTANT, 1_780_000_120_000, 3.0)]) == 1
        assert store.count() == 3
    assert sorted(p.name for p in (tmp_path / "d").iterdir()
                  if p.name.startswith(".selftest")) == []


def test_a_store_that_is_not_a_kemon_store_fails(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "store.db").write_bytes(b"this is not SQLite" * 100)
    cfg_path = tmp_path / "g.toml"
    cfg_path.write_text(f'[gateway]\nid = "G"\nunit = "{UNIT}"\ndata_dir = "d"\n',
                        encoding="utf-8")
    report = asyncio.run(run_selftest(load_config(cfg_path), deadline=5,
                                      clock=lambda: ClockState(time.time(), True, "test")))
    check = next(c for c in report.checks if c.id == "store")
    assert check.status is Status.FAIL and "store.db" in check.detail
    assert not report.passed


# --- real runs ----------------------------------------------------------------------------

INLINE_TCP = """
[[meter.point]]
code = "{m}.u"
register = 0
function = "input"
type = "float32"
unit = "V"

[[meter.point]]
code = "{m}.i"
register = 2
function = "input"
type = "float32"
unit = "A"

[[meter.point]]
code = "{m}.kwh"
register = 4
function = "input"
type = "float32"
unit = "kWh"
counter = true
"""


@dataclass
class Site:
    dir: Path
    pki: Pki
    broker: Broker
    gw: ClientFiles
    tcp_port: int

    def meter(self, name: str, bus: str, address: int | str, body: str) -> str:
        addr = f'"{address}"' if isinstance(address, str) else address
        return f'\n[[meter]]\nname = "{name}"\nbus = "{bus}"\naddress = {addr}\n{body}'

    def buses(self) -> str:
        return f"""
[[bus]]
name = "lan"
kind = "modbus-tcp"
host = "127.0.0.1"
port = {self.tcp_port}
timeout = 0.5

[[bus]]
name = "rs485-1"
kind = "modbus-rtu"
port = "{self.dir}/rs485-1"
timeout = 0.3

[[bus]]
name = "rs485-2"
kind = "dlt645"
port = "{self.dir}/rs485-2"
timeout = 0.5
"""

    def good_meters(self) -> str:
        return (self.meter("incomer", "lan", 1, INLINE_TCP.format(m="incomer"))
                + self.meter("line", "rs485-1", 3, INLINE_TCP.format(m="line"))
                + self.meter("main645", "rs485-2", "000000000001",
                             'profile = "dlt645_3phase"'))

    def config(self, name: str, *, meters: str = "", buses: str = "",
               url: str | None = None, ca: Path | None = None,
               files: ClientFiles | None = None) -> Path:
        files = files or self.gw
        text = (f'[gateway]\nid = "GWS"\nunit = "{UNIT}"\ndata_dir = "data-{name}"\n'
                "require_time_sync = false\n" + self.buses() + buses
                + self.good_meters() + meters
                + f'\n[[destination]]\nname = "province"\nurl = "{url or self.broker.url}"\n'
                  f'ca_file = "{ca or self.pki.ca_path}"\ncert_file = "{files.cert_path}"\n'
                  f'key_file = "{files.key_path}"\n')
        path = self.dir / f"{name}.toml"
        path.write_text(text, encoding="utf-8")
        return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("selftest")
    pki = make_pki(root / "pki")
    broker = Broker(pki, root / "broker")
    broker.start()
    s = Site(root, pki, broker, pki.gateway(UNIT, "GWS"), free_port())
    # The simulator serves every meter any test uses: the good ones, a silent one and one with
    # a frequency (50 Hz) that a test reads with a wrong scale.
    freq = '[[meter.point]]\ncode = "freq.f"\nregister = 0\nfunction = "input"\n' \
           'type = "float32"\nunit = "Hz"\n'
    sim_cfg = s.config("sim", meters=s.meter("dead", "rs485-1", 9, INLINE_TCP.format(m="dead"))
                       + s.meter("freq", "lan", 2, freq))
    log = root / "sim.log"
    with log.open("wb") as out:
        sim = subprocess.Popen(kemon_cmd("sim", "-c", str(sim_cfg), "--make-ports",
                                         "--fault", "dead=silent"),
                               stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while "sim: ready" not in log.read_text():
            assert sim.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield s
    finally:
        sim.terminate()
        sim.wait(10)
        broker.stop()


def selftest(cfg: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    res = run_kemon("gateway", "selftest", "-c", str(cfg), "--json", *args, timeout=60)
    assert "Traceback" not in res.stderr, res.stderr
    return res, json.loads(res.stdout)


def checks_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in report["checks"]}


def failed(report: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["detail"] for c in report["checks"] if c["status"] == "fail"}


def test_a_good_site_passes_and_both_records_are_written(site: Site) -> None:
    cfg = site.config("good")
    out = site.dir / "reports"
    res = run_kemon("gateway", "selftest", "-c", str(cfg), "--report-dir", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASSED 通过" in res.stdout and "仪表 main645 Meter main645" in res.stdout
    [json_path] = out.glob("selftest-GWS-*.json")
    [html_path] = out.glob("selftest-GWS-*.html")
    assert json_path.stem == html_path.stem
    assert str(json_path) in res.stderr
    report = json.loads(json_path.read_text(encoding="utf-8"))
    assert report["passed"] is True and report["gateway"] == "GWS" and report["unit"] == UNIT
    checks = checks_of(report)
    assert set(checks) == {"certificate", "clock", "disk", "store", "instance", "port.lan",
                           "port.rs485-1", "port.rs485-2", "meter.incomer", "meter.line",
                           "meter.main645", "destination.province"}
    assert {c["status"] for c in checks.values()} <= {"pass", "warn"}
    assert checks["clock"]["status"] == "warn"          # require_time_sync = false here
    assert checks["certificate"]["measured"]["days_left"] > 30
    assert checks["meter.line"]["measured"]["values"].keys() == {"line.u", "line.i", "line.kwh"}
    assert len(checks["meter.main645"]["measured"]["values"]) == 11
    assert "MQTT CONNECT accepted" in checks["destination.province"]["detail"]
    assert checks["destination.province"]["measured"]["client_id"].endswith(":selftest")
    rows = parse_html(html_path.read_text(encoding="utf-8"))
    assert rows.rows == {i: c["status"] for i, c in checks.items()}
    # the probe published nothing and left no session on the broker
    assert "selftest" in site.broker.log_text()
    assert not any(p.name.startswith(".selftest") for p in (site.dir / "data-good").iterdir())


def test_a_missing_serial_port(site: Site) -> None:
    bus = f'\n[[bus]]\nname = "rs485-9"\nkind = "modbus-rtu"\nport = "{site.dir}/ttyGone"\n'
    cfg = site.config("noport", buses=bus,
                      meters=site.meter("ghost", "rs485-9", 4, INLINE_TCP.format(m="ghost")))
    res, report = selftest(cfg)
    assert res.returncode == 1
    bad = failed(report)
    assert set(bad) == {"port.rs485-9", "meter.ghost"}
    assert f"{site.dir}/ttyGone does not exist" in bad["port.rs485-9"]
    assert "bus rs485-9 is not available" in bad["meter.ghost"]


def test_a_silent_meter_and_an_implausible_one(site: Site) -> None:
    a, b = point_constants(PointConfig(code="freq.f", unit="Hz"))
    assert 45 < a - b and a + b < 65              # the simulator serves a plausible 50 Hz …
    cfg = site.config("silent", meters=site.meter("dead", "rs485-1", 9,
                                                  INLINE_TCP.format(m="dead"))
                      + site.meter("freq", "lan", 2, '[[meter.point]]\ncode = "freq.f"\n'
                               'register = 0\nfunction = "input"\ntype = "float32"\n'
                               'unit = "Hz"\nscale = 10.0\n'))   # … read with a wrong scale
    started = time.monotonic()
    res = run_kemon("gateway", "selftest", "-c", str(cfg), "--timeout", "3")
    assert time.monotonic() - started < 15
    assert res.returncode == 1, res.stdout
    [json_path] = (site.dir / "data-silent").glob("selftest-GWS-*.json")   # default: data_dir
    bad = failed(json.loads(json_path.read_text(encoding="utf-8")))
    assert set(bad) == {"meter.dead", "meter.freq"}
    assert "address 9" in bad["meter.dead"] and "no answer" in bad["meter.dead"]
    assert "outside the plausible 45 to 65 Hz" in bad["meter.freq"]
    assert "FAIL 失败  仪表 dead Meter dead" in res.stdout
    assert "FAILED 未通过" in res.stdout


def test_a_broker_that_is_down(site: Site) -> None:
    port = free_port()
    res, report = selftest(site.config("down", url=f"mqtts://127.0.0.1:{port}"))
    assert res.returncode == 1
    bad = failed(report)
    assert set(bad) == {"destination.province"}
    assert f"cannot connect to 127.0.0.1:{port}" in bad["destination.province"]
    assert "refused" in bad["destination.province"].lower()


def test_a_broker_whose_ca_does_not_match(site: Site) -> None:
    other = make_pki(site.dir / "other-pki", ca_name="Some Other CA")
    res, report = selftest(site.config("wrongca", ca=other.ca_path))
    assert res.returncode == 1
    bad = failed(report)
    assert set(bad) == {"destination.province"}
    assert "TLS handshake failed: certificate verify failed" in bad["destination.province"]
    assert "did the CA in ca.pem sign the broker's certificate?" in bad["destination.province"]


def test_an_expired_client_certificate(site: Site) -> None:
    now = dt.datetime.now(dt.UTC)
    old = site.pki.client(f"{UNIT}/GWS", not_before=now - dt.timedelta(days=20),
                          not_after=now - dt.timedelta(days=1))
    res, report = selftest(site.config("expired", files=old))
    assert res.returncode == 1
    bad = failed(report)
    assert set(bad) == {"certificate", "destination.province"}
    assert f"expired on {(now - dt.timedelta(days=1)).date()}" in bad["certificate"]
    # Which words the broker's refusal arrives with varies (TLS 1.3 sends the alert after the
    # handshake, and it may be lost to an EOF); the expiry is named either way.
    detail = bad["destination.province"]
    assert ("the broker refused our certificate (sslv3 alert certificate expired)" in detail
            or "our certificate expired on" in detail), detail


def test_a_hung_broker_costs_only_the_deadline(site: Site) -> None:
    with socket.socket() as silent:         # accepts TCP, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        res, report = selftest(site.config("hung", url=f"mqtts://127.0.0.1:{port}"),
                               "--timeout", "1.5")
        took = time.monotonic() - started
    assert res.returncode == 1 and took < 10
    bad = failed(report)
    assert set(bad) == {"destination.province"}
    detail = bad["destination.province"]
    assert "timed out" in detail or "no result within 1.5 s" in detail, detail


@pytest.mark.parametrize(("text", "words"), [
    ('[gateway]\nid = "bad id!"\n', "gateway.id"),
    ("not toml [", "gateway.toml"),
])
def test_bad_configuration_is_one_line_exit_2(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    res = run_kemon("gateway", "selftest", "-c", str(path))
    assert res.returncode == 2
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert res.stdout == ""


def test_bad_options_exit_2(tmp_path: Path) -> None:
    res = run_kemon("gateway", "selftest", "-c", str(tmp_path / "none.toml"), "--timeout", "0")
    assert res.returncode == 2


def test_while_a_gateway_runs_the_buses_are_left_alone(site: Site) -> None:
    from gateway._instance import InstanceLock

    cfg = site.config("running")
    data = site.dir / "data-running"
    data.mkdir(exist_ok=True)
    with InstanceLock(data):                  # what `kemon gateway run` holds while it runs
        res, report = selftest(cfg)
    assert res.returncode == 1
    checks = checks_of(report)
    assert checks["instance"]["status"] == "fail"
    assert f"a gateway (pid {os.getpid()}) is running on" in checks["instance"]["detail"]
    assert "systemctl stop kemon-gateway" in checks["instance"]["detail"]
    untouched = {k for k, c in checks.items() if c["detail"] == "not tested while the gateway runs"}
    assert untouched == {"port.lan", "port.rs485-1", "port.rs485-2", "meter.incomer",
                         "meter.line", "meter.main645"}
    # what does not touch the buses is still checked
    assert checks["destination.province"]["status"] == "pass"
    assert checks["store"]["status"] in ("pass", "warn")
    res, report = selftest(cfg)               # stopped: the same site passes
    assert res.returncode == 0, failed(report)
    assert checks_of(report)["instance"]["status"] == "pass"
