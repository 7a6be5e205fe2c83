"""Loading the gateway's TOML configuration (CONTRACT.md) into frozen ``GatewayConfig``.

Loaded once at the entry point. Every problem raises ``ConfigError`` naming the file, the key
path (``meter[2].point[0].type``) and the fix; unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from protocol import CreditCodeError, EnergyType, load_energy_types, validate_credit_code
from protocol._toml_table import Table

from ._errors import ConfigError
from ._model import (
    BUS_KINDS,
    BusConfig,
    DestinationConfig,
    GatewayConfig,
    GatewaySection,
    MeterConfig,
    PointConfig,
    StoreConfig,
)
from ._points import check_point, read_point_fields
from ._profiles import load_profile

__all__ = ["load_config"]

GATEWAY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
_PROTOCOL_OF_BUS = {"modbus-rtu": "modbus", "modbus-tcp": "modbus", "dlt645": "dlt645",
                    "cjt188": "cjt188"}


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate ``path``. Raises ConfigError (or it wraps OSError as one)."""
    file = Path(path)
    top = Table.from_file(file, ConfigError)
    base = file.resolve().parent

    section = _gateway_section(
        top.table("gateway", required=True, hint="add a [gateway] table with id and unit"), base)
    store = _store_section(top.table("store"))
    energy = _energy_table(top)
    buses = _buses(top)
    meters = _meters(top, base, {b.name: b for b in buses}, frozenset(energy))
    destinations = _destinations(top, base)
    top.done()
    if section.key_file is None and destinations and destinations[0].key_file is not None:
        section = dataclasses.replace(section, key_file=destinations[0].key_file,
                                      cert_file=destinations[0].cert_file)
    return GatewayConfig(source=file.resolve(), gateway=section, buses=tuple(buses),
                         meters=tuple(meters), destinations=tuple(destinations), store=store,
                         energy=energy)


def _gateway_section(t: Table, base: Path) -> GatewaySection:
    gid = t.req("id", str, hint='e.g. id = "GW0001"')
    t.check("id", gid, lambda v: bool(GATEWAY_ID_RE.match(v)),
            f"{gid!r} is not a gateway id: 1-32 of A-Z a-z 0-9 _ -")
    unit = t.req("unit", str, hint="the unit's 18-character unified social credit code")
    try:
        unit = validate_credit_code(unit)
    except CreditCodeError as exc:
        raise t.error("unit", str(exc)) from None
    data_dir = Path(t.req("data_dir", str, hint='e.g. data_dir = "/var/lib/kemon"'))
    key_file, cert_file = t.get("key_file", str), t.get("cert_file", str)
    for name, value in (("key_file", key_file), ("cert_file", cert_file)):
        if value is not None and not (base / value).is_file():
            raise t.error(name, f"no such file: {(base / value).resolve()}")
    section = GatewaySection(
        id=gid, unit=unit, data_dir=(base / data_dir).resolve(),
        require_time_sync=t.get("require_time_sync", bool, True),
        key_file=(base / key_file).resolve() if key_file else None,
        cert_file=(base / cert_file).resolve() if cert_file else None,
    )
    t.done()
    return section


def _store_section(t: Table) -> StoreConfig:
    days = t.get("retention_days", int, 200)
    budget = t.get("disk_budget_mb", int, 2048)
    full = t.get("full_resolution_days", int, 31)
    t.check("retention_days", days, lambda d: d >= 1, "must be at least 1 day")
    t.check("disk_budget_mb", budget, lambda b: b >= 16, "must be at least 16 (MB)")
    t.check("full_resolution_days", full, lambda d: 1 <= d <= days,
            f"must be between 1 and retention_days ({days})")
    t.done()
    return StoreConfig(retention_days=days, disk_budget_mb=budget, full_resolution_days=full)


def _energy_table(top: Table) -> Mapping[str, EnergyType]:
    overrides = top.get("energy", dict, {})
    try:
        return load_energy_types(overrides or None)
    except ValueError as exc:
        raise top.error("energy", str(exc)) from None


def _buses(top: Table) -> list[BusConfig]:
    buses: list[BusConfig] = []
    names: set[str] = set()
    for t in top.tables("bus"):
        name = t.req("name", str)
        t.check("name", name, lambda n: bool(NAME_RE.match(n)),
                f"{name!r} is not a bus name: 1-64 of A-Z a-z 0-9 _ . -")
        if name in names:
            raise t.error("name", f"bus {name!r} is defined twice")
        names.add(name)
        kind = t.choice("kind", BUS_KINDS)
        host = t.get("host", str)
        timeout = t.get("timeout", float, 1.0)
        retries = t.get("retries", int, 1)
        t.check("timeout", timeout, lambda v: 0 < v <= 30, "must be between 0 and 30 seconds")
        t.check("retries", retries, lambda v: 0 <= v <= 5, "must be between 0 and 5")
        if kind == "modbus-tcp" or host is not None:
            if kind == "modbus-rtu":
                raise t.error("host", "a modbus-rtu bus is serial: use port = \"/dev/…\", "
                                      "or kind = \"modbus-tcp\"")
            if host is None:
                raise t.error("host", "is missing; a modbus-tcp bus needs host and port")
            tcp_port = t.get("port", int, 502 if kind == "modbus-tcp" else None,
                             required=kind != "modbus-tcp", hint="the TCP port, e.g. port = 502")
            assert tcp_port is not None
            t.check("port", tcp_port, lambda p: 0 < p < 65536, f"{tcp_port} is not a TCP port")
            bus = BusConfig(name=name, kind=kind, host=host, tcp_port=tcp_port, timeout=timeout,
                            retries=retries)
            for serial_key in ("baudrate", "parity", "stopbits", "bytesize"):
                if t.has(serial_key):
                    raise t.error(serial_key, "is a serial setting; this bus is TCP (host)")
        else:
            port = t.req("port", str, hint='the serial device, e.g. port = "/dev/ttyAMA0"')
            default_baud = 2400 if kind == "dlt645" else 9600
            default_parity = "E" if kind in ("dlt645", "cjt188") else "N"
            baud = t.get("baudrate", int, default_baud)
            t.check("baudrate", baud, lambda b: b in BAUDRATES,
                    f"{baud} is not a standard rate: {', '.join(map(str, BAUDRATES))}")
            stopbits = t.get("stopbits", int, 1)
            bytesize = t.get("bytesize", int, 8)
            t.check("stopbits", stopbits, lambda s: s in (1, 2), "must be 1 or 2")
            t.check("bytesize", bytesize, lambda s: s in (7, 8), "must be 7 or 8")
            bus = BusConfig(name=name, kind=kind, port=port, baudrate=baud,
                            parity=t.choice("parity", ("N", "E", "O"), default_parity),
                            stopbits=stopbits, bytesize=bytesize, timeout=timeout, retries=retries)
        t.done()
        buses.append(bus)
    return buses


def _address(t: Table, kind: str) -> str:
    if kind.startswith("modbus"):
        addr = t.req("address", int, hint="the Modbus unit id, 1-247")
        t.check("address", addr, lambda a: 1 <= a <= 247, f"{addr} is not a Modbus unit id (1-247)")
        return str(addr)
    digits = 12 if kind == "dlt645" else 14
    raw: Any = t.data.get("address")
    if isinstance(raw, int) and not isinstance(raw, bool):
        raise t.error("address", f'write the address as a string of {digits} digits, '
                                 f'e.g. address = "{str(raw).zfill(digits)}"')
    addr_s = t.req("address", str, hint=f"{digits} digits")
    t.check("address", addr_s, lambda a: len(a) == digits and a.isdigit(),
            f"{addr_s!r} is not a {kind} address: exactly {digits} digits")
    return addr_s


def _meters(top: Table, base: Path, buses: dict[str, BusConfig],
            energy_keys: frozenset[str]) -> list[MeterConfig]:
    meters: list[MeterConfig] = []
    names: set[str] = set()
    codes: dict[str, str] = {}
    for t in top.tables("meter"):
        name = t.req("name", str)
        t.check("name", name, lambda n: bool(NAME_RE.match(n)),
                f"{name!r} is not a meter name: 1-64 of A-Z a-z 0-9 _ . -")
        if name in names:
            raise t.error("name", f"meter {name!r} is defined twice")
        names.add(name)
        bus_name = t.req("bus", str)
        if bus_name not in buses:
            raise t.error("bus", f"no [[bus]] named {bus_name!r}; defined: "
                                 f"{', '.join(buses) or '(none)'}")
        bus = buses[bus_name]
        protocol = _PROTOCOL_OF_BUS[bus.kind]
        address = _address(t, bus.kind)
        interval = t.get("interval", int, 60)
        t.check("interval", interval, lambda i: 1 <= i <= 86400 and 86400 % i == 0,
                f"{interval} does not divide a day into whole polls; use e.g. 5, 10, 15, 30, 60, "
                "300, 900 or 3600")
        offline_after = t.get("offline_after", int, 3)
        t.check("offline_after", offline_after, lambda v: v >= 1, "must be at least 1")

        merged: dict[str, tuple[Table, dict[str, Any]]] = {}
        profile_ref = t.get("profile", str)
        device_type = t.get("device_type", int)
        if profile_ref is not None:
            try:
                profile = load_profile(profile_ref, base)
            except FileNotFoundError as exc:
                raise t.error("profile", str(exc)) from None
            if profile.protocol != protocol:
                raise t.error("profile", f"profile {profile.name!r} speaks {profile.protocol}, "
                                         f"but bus {bus.name!r} is {bus.kind}")
            for pt, fields in profile.points:
                merged[fields["key"]] = (pt, {**fields, "code": f"{name}.{fields['key']}"})
            if device_type is None:
                device_type = profile.device_type
        for pt in t.tables("point"):
            fields = read_point_fields(pt)
            key = fields.get("key") or fields.get("code")
            if not key:
                raise pt.error("code", "is missing; an inline point needs a code "
                                       "(or a key naming a profile point to override)")
            if key in merged and profile_ref is not None and "key" in fields:
                _, old = merged[key]
                merged[key] = (pt, {**old, **fields})
            elif "key" in fields and "code" not in fields:
                raise pt.error("key", f"{key!r} is not a point of profile {profile_ref!r}"
                               if profile_ref else "names a profile point, but the meter has "
                               "no profile; give the point a code")
            else:
                if key in merged:
                    raise pt.error("code", f"{key!r} appears twice in this meter")
                merged[key] = (pt, {"key": key, **fields})
        if not merged:
            raise t.error("point", "the meter has no points: name a profile or add [[meter.point]]")
        points: list[PointConfig] = []
        for pt, point_fields in merged.values():
            check_point(pt, point_fields, protocol, energy_keys)
            fields = point_fields
            code = fields["code"]
            if code in codes:
                raise pt.error("code", f"{code!r} is already used by meter {codes[code]!r}; "
                                       "point codes are unique in a gateway")
            codes[code] = name
            if fields.get("counter") and "counter_max" not in fields:
                wrap = default_counter_max(fields, protocol)
                if wrap is not None:
                    fields = {**fields, "counter_max": wrap}
            points.append(PointConfig(**fields))
        if protocol == "cjt188" and device_type is None:
            raise t.error("device_type", "is missing; CJ/T 188 needs the meter type byte "
                                         "(e.g. 0x10 cold water), from the profile or here")
        t.done()
        meters.append(MeterConfig(name=name, bus=bus_name, address=address, points=tuple(points),
                                  interval=interval, profile=profile_ref, device_type=device_type,
                                  offline_after=offline_after))
    return meters


_INT_RANGES = {"uint16": 2**16, "uint32": 2**32, "uint64": 2**64,
               "int16": 2**15, "int32": 2**31, "int64": 2**63}


def default_counter_max(fields: dict[str, Any], protocol: str) -> float | None:
    """Where a counter wraps, after scale, when the configuration does not say.

    Modbus integer registers wrap at their range (a signed counter at its positive limit);
    floats do not wrap. DL/T 645 values wrap at their BCD format's range (XXXXXX.XX: at
    1,000,000, DL/T 645-2007 appendix A). CJ/T 188 readings are converted between units by the
    driver, so no default is guessed: set ``counter_max`` for them.
    """
    scale = float(fields.get("scale", 1.0))
    if protocol == "modbus":
        span = _INT_RANGES.get(fields.get("type", "uint16"))
        return None if span is None else span * abs(scale)
    if protocol == "dlt645":
        from ._dlt645 import data_item

        try:
            item = data_item(fields["di"])
        except (KeyError, ValueError):
            return None
        whole_digits = len(item.fmt.replace(".", "")) - item.decimals
        return 10.0 ** whole_digits * abs(scale)
    return None


def _destinations(top: Table, base: Path) -> list[DestinationConfig]:
    out: list[DestinationConfig] = []
    names: set[str] = set()
    for t in top.tables("destination"):
        name = t.req("name", str)
        if name in names:
            raise t.error("name", f"destination {name!r} is defined twice")
        names.add(name)
        url = t.req("url", str, hint='e.g. url = "mqtts://broker.example.gov.cn:8883"')
        insecure = t.get("insecure", bool, False)
        parts = urlsplit(url)
        if parts.scheme not in ("mqtts", "mqtt") or not parts.hostname:
            raise t.error("url", f"{url!r} is not an mqtts://host:port URL")
        if parts.scheme == "mqtt" and not insecure:
            raise t.error("url", "plain mqtt:// sends data unencrypted and unauthenticated; use "
                                 "mqtts://, or set insecure = true for a test broker")

        def path_of(key: str, t: Table = t) -> Path | None:
            value = t.get(key, str)
            return (base / value).resolve() if value is not None else None

        rate = t.get("rate_limit", float, 50.0)
        inflight = t.get("max_inflight", int, 64)
        keepalive = t.get("keepalive", int, 30)
        t.check("rate_limit", rate, lambda r: r > 0, "must be more than 0 (batches per second)")
        t.check("max_inflight", inflight, lambda n: 1 <= n <= 65535, "must be 1..65535")
        t.check("keepalive", keepalive, lambda k: 5 <= k <= 3600, "must be 5..3600 seconds")
        files = {key: path_of(key) for key in ("ca_file", "cert_file", "key_file")}
        for key, value in files.items():
            if value is None and parts.scheme == "mqtts":
                raise t.error(key, "is missing; mqtts:// needs ca_file, cert_file and key_file")
            if value is not None and not value.is_file():
                raise t.error(key, f"no such file: {value}")
        out.append(DestinationConfig(name=name, url=url, ca_file=files["ca_file"],
                                     cert_file=files["cert_file"], key_file=files["key_file"],
                                     insecure=insecure, rate_limit=rate, max_inflight=inflight,
                                     keepalive=keepalive))
        t.done()
    return out
