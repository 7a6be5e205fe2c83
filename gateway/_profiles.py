"""Meter profiles: register maps of real meters, shipped in ``hardware/profiles/*.toml``.

A profile is a ``[profile]`` table (name, manufacturer, model, protocol, source — the
manufacturer document its map comes from) and ``[[point]]`` tables in the meter point syntax,
with ``key`` instead of ``code``. A meter names a profile by its name, or by a path to a TOML
file (relative to the configuration file) for a site's own meter.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from protocol._toml_table import Table

from ._errors import ConfigError
from ._points import read_point_fields

__all__ = ["PROTOCOLS", "Profile", "builtin_profiles", "load_profile"]

PROTOCOLS = ("modbus", "dlt645", "cjt188")


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    manufacturer: str
    model: str
    protocol: str
    source: str
    points: tuple[tuple[Table, dict[str, Any]], ...]   # (located table, fields) per point
    device_type: int | None = None
    file: Path | None = None


def _profile_dir() -> Path:
    return Path(str(resources.files("hardware") / "profiles"))


def builtin_profiles() -> dict[str, Path]:
    """Shipped profiles by name."""
    return {p.stem: p for p in sorted(_profile_dir().glob("*.toml"))}


def load_profile(ref: str, relative_to: Path) -> Profile:
    """Load the profile ``ref``: a shipped profile name or a path ending in ``.toml``.

    Raises ConfigError (located in the profile file) when it is wrong, or ``FileNotFoundError``
    when there is no such profile.
    """
    if ref.endswith(".toml") or "/" in ref:
        path = (relative_to / ref).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no profile file {path}")
    else:
        shipped = builtin_profiles()
        if ref not in shipped:
            raise FileNotFoundError(f"no profile named {ref!r}; shipped profiles: "
                                    f"{', '.join(shipped) or '(none)'}")
        path = shipped[ref]
    top = Table.from_file(path, ConfigError)
    head = top.table("profile")
    name = head.req("name", str)
    protocol = head.choice("protocol", PROTOCOLS)
    profile_points: list[tuple[Table, dict[str, Any]]] = []
    keys: set[str] = set()
    for pt in top.tables("point"):
        fields = read_point_fields(pt)
        if "code" in fields:
            raise pt.error("code", "profiles name points by `key`; the meter assigns codes")
        key = fields.get("key")
        if not key:
            raise pt.error("key", "is missing; every profile point needs a short key")
        if key in keys:
            raise pt.error("key", f"{key!r} appears twice in this profile")
        keys.add(key)
        profile_points.append((pt, fields))
    profile = Profile(
        name=name,
        manufacturer=head.req("manufacturer", str),
        model=head.req("model", str),
        protocol=protocol,
        source=head.req("source", str, hint="cite the document the register map comes from"),
        points=tuple(profile_points),
        device_type=head.get("device_type", int),
        file=path,
    )
    head.done()
    top.done()
    return profile
