"""The unit files in systemd/ pass `systemd-analyze verify` (with ExecStart pointed at this
checkout's `kemon`, since verify checks that the command exists), and keep the properties the
appliance relies on: notify + watchdog for the gateway, restart always, an unprivileged user,
hardening."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

UNITS = sorted((ROOT / "systemd").glob("*.service"))
# the long-running services; the first-boot oneshot must run as root to install the bundle
SERVICES = [u for u in UNITS if u.name in ("kemon-gateway.service", "kemon-collector.service")]
KEMON = Path(sys.executable).parent / "kemon"


def parse(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text(encoding="utf-8"))
    return parser


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is required (make test installs systemd)"
    assert KEMON.exists(), KEMON
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text(encoding="utf-8").replace("/usr/local/bin/kemon", str(KEMON)),
                    encoding="utf-8")
    res = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                         timeout=60, check=False)
    problems = [line for line in (res.stdout + res.stderr).splitlines()
                if unit.name in line or "error" in line.lower()]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr


def test_there_are_units_for_gateway_and_collector() -> None:
    assert {u.name for u in UNITS} >= {"kemon-gateway.service", "kemon-collector.service"}


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_unit_is_hardened_and_restarts(unit: Path) -> None:
    service = parse(unit)["Service"]
    assert service["Restart"] == "always"
    assert service["User"] == "kemon"
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "true"),
                       ("PrivateTmp", "true"), ("ProtectHome", "true")):
        assert service[key] == value, key
    assert service["ReadWritePaths"] == "/var/lib/kemon"
    assert service["CapabilityBoundingSet"] == ""


def test_gateway_unit_is_notify_with_a_watchdog_and_serial_access() -> None:
    service = parse(ROOT / "systemd" / "kemon-gateway.service")["Service"]
    assert service["Type"] == "notify"          # gateway/_runner.py sends READY=1 and pings
    assert int(service["WatchdogSec"]) >= 10
    assert "dialout" in service["SupplementaryGroups"].split()
    assert "PrivateDevices" not in service        # it must see /dev/ttyUSB*, /dev/rs485-*


def test_first_boot_unit_runs_once_before_the_gateway() -> None:
    unit = parse(ROOT / "systemd" / "kemon-firstboot.service")
    assert unit["Service"]["Type"] == "oneshot"
    # it runs only while the bundle is on the boot partition: firstboot.sh removes it
    assert unit["Unit"]["ConditionPathExists"] == "/boot/firmware/kemon/firstboot.sh"
    assert "kemon-gateway.service" in unit["Unit"]["Before"].split()
