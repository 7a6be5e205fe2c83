"""`kemon demo` (what `make demo` runs) from start to end: live site, then the time-lapse."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT, kemon_cmd


@pytest.mark.slow
def test_demo_runs_the_chain_and_shows_consumption(tmp_path: Path) -> None:
    # a relative --dir, as `make demo` gives it (demo-data, from the checkout)
    res = subprocess.run(kemon_cmd("demo", "--dir", "demo", "--duration", "8"), cwd=tmp_path,
                         capture_output=True, text=True, timeout=180, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = res.stdout
    assert res.returncode == 0, res.stderr + out
    assert "demo: gateway stopped (exit 0)" in out
    # the platform was provisioned with the real commands and the chain ran with mutual TLS
    for step in ("provision ca init", "provision server", "provision broker",
                 "provision collector", "provision gateway"):
        assert f"$ kemon {step} " in out, step
    assert out.count("$ kemon provision ca init ") == 2            # province and national
    # the commissioning self-test ran and named the silent meter as its one failure
    assert "$ kemon gateway selftest -c " in out
    assert re.search(r"^    FAIL \S+\s+仪表 spare Meter spare .*no answer", out, re.M), out
    assert "demo: self-test exit 1 (0 only when every check passes)" in out
    assert len(list((tmp_path / "demo" / "selftest").glob("selftest-DEMO01-*.html"))) == 1
    stored = re.search(r"^demo: the province collector stored (\d+) readings in (\d+) batches",
                       out, re.M)
    assert stored and int(stored[1]) > 0 and int(stored[2]) > 0, out
    row = re.search(r"^  91320100MA1ABCDE0C  DEMO01 .*$", out, re.M)
    assert row, out
    # no seq missing, nothing quarantined: every batch passed the collector's checks
    *_, gaps, count, quarantined = row[0].split()
    assert (gaps, quarantined) == ("0", "0") and int(count) == int(stored[1])
    national = re.search(r"^demo: the national collector stored (\d+) readings in (\d+) "
                         r"batches, relayed unchanged", out, re.M)
    assert national and national.groups() == stored.groups(), out    # 数据对接: all relayed
    assert re.search(r"relay to national \(上报\): 0 batches not yet acknowledged", out), out
    readings = subprocess.run(
        kemon_cmd("collector", "readings", "-c", "demo/platform/collector/collector.toml"),
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True).stdout
    assert len(readings.splitlines()) == int(stored[1])
    live = re.findall(r"^  \S+\s+(\S+)\s+instant\s+[\d.]+\s+good$", out, re.M)
    assert "0000000001000001" in set(live)
    assert re.search(r"meter spare .* (OFFLINE|FAILING) ", out)
    assert re.search(r"meter incomer .* online", out)
    quarters = re.findall(r"^  \S+ \S+ 15min\s+(\S+)\s+([\d.]+) kWh\s+=\s+([\d.]+) tce  good$",
                          out, re.M)
    hours = re.findall(r"^  \S+ \S+ hour\s+(\S+)\s+([\d.]+) kWh", out, re.M)
    assert len(quarters) >= 8 and len(hours) >= 2, out
    for _, kwh, tce in quarters:        # GB/T 2589: 0.1229 kgce per kWh
        assert float(tce) == pytest.approx(float(kwh) * 0.1229 / 1000, abs=1e-5)


def test_demo_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    res = subprocess.run(kemon_cmd("demo", "--dir", str(tmp_path), "--duration", "1"),
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: --dir {tmp_path}: exists and was not made by 'kemon demo'; "
        "give an empty or new directory"]
    assert (tmp_path / "notes.txt").read_text() == "keep me"
