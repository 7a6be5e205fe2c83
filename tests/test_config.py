"""Configuration: good files load into frozen objects; every bad one names file, key and fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway._config import load_config
from gateway._errors import ConfigError

from .conftest import UNIT, run_kemon

BASE = f"""
[gateway]
id = "GW0001"
unit = "{UNIT}"
data_dir = "data"
require_time_sync = false

[[bus]]
name = "rs485-1"
kind = "modbus-rtu"
port = "/dev/ttyAMA0"
baudrate = 9600

[[bus]]
name = "lan"
kind = "modbus-tcp"
host = "127.0.0.1"
port = 1502
timeout = 0.5

[[meter]]
name = "incomer"
bus = "rs485-1"
address = 1
interval = 60

[[meter.point]]
code = "0000000001000001"
name = "total active energy"
register = 342
function = "input"
type = "float32"
unit = "kWh"
counter = true
energy = "electricity"
max_rate = 5000

[[meter.point]]
code = "incomer.p"
register = 12
type = "int32"
word_order = "little"
scale = 0.1
unit = "kW"
"""


def test_good_config_loads_into_frozen_objects(write_config) -> None:
    path = write_config(BASE)
    cfg = load_config(path)
    assert cfg.gateway.id == "GW0001"
    assert cfg.gateway.data_dir == (path.parent / "data").resolve()
    assert cfg.gateway.require_time_sync is False
    rtu, tcp = cfg.buses
    assert (rtu.port, rtu.baudrate, rtu.parity, rtu.is_tcp) == ("/dev/ttyAMA0", 9600, "N", False)
    assert (tcp.host, tcp.tcp_port, tcp.timeout, tcp.is_tcp) == ("127.0.0.1", 1502, 0.5, True)
    (meter,) = cfg.meters
    energy, power = meter.points
    assert energy.counter and energy.type == "float32" and energy.max_rate == 5000.0
    assert power.word_order == "little" and power.scale == 0.1 and not power.counter
    with pytest.raises(dataclasses.FrozenInstanceError):
        meter.interval = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("old", "new", "key", "words"),
    [
        ('type = "float32"', 'type = "flot32"', "meter[0].point[0].type", "not one of"),
        ('id = "GW0001"', 'id = "GW 0001"', "gateway.id", "not a gateway id"),
        (f'unit = "{UNIT}"', 'unit = "91320100MA1ABCDE0D"', "gateway.unit", "check"),
        ('kind = "modbus-rtu"', 'kind = "canbus"', "bus[0].kind", "not one of"),
        ("baudrate = 9600", "baudrate = 9601", "bus[0].baudrate", "standard rate"),
        ("address = 1", "address = 300", "meter[0].address", "1-247"),
        ("address = 1", 'address = "1"', "meter[0].address", "must be an integer"),
        ("interval = 60", "interval = 7", "meter[0].interval", "divide a day"),
        ('bus = "rs485-1"', 'bus = "rs485-9"', "meter[0].bus", "no [[bus]] named"),
        ("register = 342", "register = 70000", "meter[0].point[0].register", "0..65535"),
        ('energy = "electricity"', 'energy = "plutonium"', "meter[0].point[0].energy",
         "not a known energy type"),
        ('code = "incomer.p"', 'code = "0000000001000001"', "meter[0].point[1].code",
         "appears twice"),
        ("scale = 0.1", "scale = 0", "meter[0].point[1].scale", "must not be 0"),
        ("max_rate = 5000", "max_rate = -1", "meter[0].point[0].max_rate", "greater than 0"),
        ("max_rate = 5000", "max_rate = 5000\nplausible = [10]", "meter[0].point[0].plausible",
         "must be [low, high], two numbers"),
        ("max_rate = 5000", 'max_rate = 5000\nplausible = [0, "x"]',
         "meter[0].point[0].plausible", "must be [low, high]"),
        ("max_rate = 5000", "max_rate = 5000\nplausible = [260, 180]",
         "meter[0].point[0].plausible", "low must be below high"),
        ("max_rate = 5000", "max_rate = 5000\nplausible = 5", "meter[0].point[0].plausible",
         "must be an array"),
        ('function = "input"', 'function = "coil"', "meter[0].point[0].function", "not one of"),
        ("scale = 0.1", 'scale = "0.1"', "meter[0].point[1].scale", "must be a number"),
        ("port = 1502", "port = 70000", "bus[1].port", "not a TCP port"),
        ("timeout = 0.5", "timeout = 0", "bus[1].timeout", "between 0 and 30"),
    ],
)
def test_bad_values_name_file_key_and_problem(write_config, old, new, key, words) -> None:
    assert old in BASE
    path = write_config(BASE.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.key == key
    assert words in err.message
    assert str(path) in str(err)


@pytest.mark.parametrize(
    ("where", "key"),
    [
        ("[gateway]\n", "gateway.colour"),
        ('name = "rs485-1"\n', "bus[0].colour"),
        ('name = "incomer"\n', "meter[0].colour"),
        ('code = "incomer.p"\n', "meter[0].point[1].colour"),
    ],
)
def test_unknown_keys_are_errors(write_config, where, key) -> None:
    path = write_config(BASE.replace(where, where + 'colour = "red"\n', 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert "unknown key" in info.value.message


def test_unknown_top_level_table(write_config) -> None:
    path = write_config(BASE + "\n[extra]\nx = 1\n")
    with pytest.raises(ConfigError, match="extra: unknown key"):
        load_config(path)


def test_missing_gateway_table_and_keys(write_config) -> None:
    with pytest.raises(ConfigError, match="gateway: is missing"):
        load_config(write_config("[[bus]]\nname='x'\n"))
    with pytest.raises(ConfigError) as info:
        load_config(write_config(BASE.replace('data_dir = "data"\n', "")))
    assert info.value.key == "gateway.data_dir"


def test_toml_syntax_error_names_line(write_config) -> None:
    path = write_config(BASE.replace('id = "GW0001"', 'id = "GW0001'))
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 3"):
        load_config(path)


def test_unreadable_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/gateway.toml")


def test_plain_mqtt_needs_insecure(write_config) -> None:
    dest = '\n[[destination]]\nname = "test"\nurl = "mqtt://127.0.0.1:1883"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write_config(BASE + dest))
    assert info.value.key == "destination[0].url"
    cfg = load_config(write_config(BASE + dest + "insecure = true\n"))
    assert cfg.destinations[0].insecure


def test_destination_paths_are_relative_to_the_file(write_config) -> None:
    dest = ('\n[[destination]]\nname = "province"\nurl = "mqtts://broker.example:8883"\n'
            'ca_file = "ca.pem"\ncert_file = "gw.pem"\nkey_file = "gw.key"\n')
    path = write_config(BASE + dest)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "destination[0].ca_file" and "no such file" in info.value.message
    for name in ("ca.pem", "gw.pem", "gw.key"):
        (path.parent / name).write_text("x")
    cfg = load_config(path)
    (d,) = cfg.destinations
    assert d.ca_file == path.parent.resolve() / "ca.pem"
    assert (d.host, d.port, d.tls) == ("broker.example", 8883, True)
    assert cfg.gateway.key_file == path.parent.resolve() / "gw.key"   # signs with this key


def test_energy_factor_override_is_validated(write_config) -> None:
    good = BASE + "\n[energy.natural_gas]\nfactor = 1.2143\n"
    load_config(write_config(good))
    bad = BASE + "\n[energy.natural_gas]\nfactor = -1\n"
    with pytest.raises(ConfigError) as info:
        load_config(write_config(bad))
    assert info.value.key == "energy"


@pytest.mark.parametrize(("kind", "address", "ok"), [
    ("dlt645", '"000000000001"', True),
    ("dlt645", '"12345"', False),
    ("dlt645", "1", False),
    ("cjt188", '"00000000000001"', True),
    ("cjt188", '"0000000000000X"', False),
])
def test_dlt645_and_cjt188_addresses(write_config, kind, address, ok) -> None:
    di = '"00010000"' if kind == "dlt645" else '"901F"'
    text = f"""
[gateway]
id = "g"
unit = "{UNIT}"
data_dir = "d"
[[bus]]
name = "b"
kind = "{kind}"
port = "/dev/ttyUSB0"
[[meter]]
name = "m"
bus = "b"
address = {address}
device_type = 0x10
[[meter.point]]
code = "m.e"
di = {di}
counter = true
"""
    path = write_config(text)
    if ok:
        cfg = load_config(path)
        assert cfg.buses[0].baudrate == (2400 if kind == "dlt645" else 9600)
        assert cfg.buses[0].parity == "E"
    else:
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert info.value.key == "meter[0].address"


def test_dlt645_point_needs_a_data_identifier(write_config) -> None:
    text = f"""
[gateway]
id = "g"
unit = "{UNIT}"
data_dir = "d"
[[bus]]
name = "b"
kind = "dlt645"
host = "127.0.0.1"
port = 9000
[[meter]]
name = "m"
bus = "b"
address = "000000000001"
[[meter.point]]
code = "m.e"
register = 4
"""
    with pytest.raises(ConfigError) as info:
        load_config(write_config(text))
    assert info.value.key == "meter[0].point[0].di"


# -- the command ---------------------------------------------------------------------------


def test_check_command_ok(write_config) -> None:
    path = write_config(BASE)
    res = run_kemon("gateway", "check", "-c", str(path))
    assert res.returncode == 0, res.stderr
    assert "ok: gateway GW0001" in res.stdout
    assert "2 buses, 1 meters, 2 points" in res.stdout


def test_check_command_bad_is_one_line_exit_2(write_config) -> None:
    path = write_config(BASE.replace('type = "float32"', 'type = "flot32"'))
    res = run_kemon("gateway", "check", "-c", str(path))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert str(path) in lines[0] and "meter[0].point[0].type" in lines[0]
    assert "Traceback" not in res.stderr


def test_check_command_missing_file(tmp_path: Path) -> None:
    res = run_kemon("gateway", "check", "-c", str(tmp_path / "nope.toml"))
    assert res.returncode == 2
    assert "cannot read" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("garbage", [b"\x00\xff\xfe garbage", b"[[[", b"[gateway]\nid = 5\n"])
def test_check_command_garbage(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "g.toml"
    path.write_bytes(garbage)
    res = run_kemon("gateway", "check", "-c", str(path))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_counter_wraps_default_from_the_register_type(write_config) -> None:
    text = BASE.replace('type = "int32"', 'type = "uint32"').replace(
        'code = "incomer.p"', 'code = "incomer.p"\ncounter = true')
    cfg = load_config(write_config(text))
    energy, counter = cfg.meters[0].points
    assert energy.counter_max is None                 # float32 counters do not wrap
    assert counter.counter_max == pytest.approx(2**32 * 0.1)
    explicit = text.replace("max_rate = 5000", "max_rate = 5000\ncounter_max = 99999.0")
    assert load_config(write_config(explicit)).meters[0].points[0].counter_max == 99999.0


def test_plausible_bounds_are_read_in_scaled_units(write_config) -> None:
    text = BASE.replace("max_rate = 5000", "max_rate = 5000\nplausible = [0, 1e7]")
    energy = load_config(write_config(text)).meters[0].points[0]
    assert energy.plausible == (0.0, 1e7)
    assert load_config(write_config(BASE)).meters[0].points[0].plausible is None
