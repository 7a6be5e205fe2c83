"""Loading the collector's TOML configuration (CONTRACT.md "Collector configuration") into a
frozen :class:`~collector._model.CollectorConfig`.

Loaded once, at the entry point. Every problem raises :class:`ConfigError` naming the file, the
key path (``upstream[1].url``) and what to do; unknown keys are errors. Relative paths (files,
and a relative ``sqlite:`` database) are relative to the configuration file; the loaded
configuration holds them absolute (a SQLite ``database`` always as ``sqlite:///abs/path.db``),
so nothing downstream needs to know where the file was.

Nothing here connects anywhere: ``kemon collector check`` opens the database and reads the
certificates afterwards.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from urllib.parse import quote, urlsplit

from protocol import validate_region_code
from protocol._toml_table import ConfigError, Table

from ._model import BrokerConfig, CollectorConfig, CollectorSection, UpstreamConfig
from ._storage import StorageURLError, redact_url, sqlite_path

__all__ = ["ROLES", "ConfigError", "load_config"]

ROLES = ("province", "national")
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# MQTT 5.0 §4.8.2: a ShareName "MUST NOT contain the characters "/", "+" or "#""; it is one
# topic level, and a topic name must not hold U+0000 (§4.7.3).
_SHARE_FORBIDDEN = frozenset("/+#\x00")
SHARE_GROUP_MAX = 64


def load_config(path: str | Path) -> CollectorConfig:
    """Read and validate ``path``; :class:`ConfigError` for anything wrong with it."""
    file = Path(path)
    top = Table.from_file(file)
    base = file.resolve().parent
    top.allow("collector", "broker", "upstream")
    top.done()              # a misspelt table is named as such, before "[collector] is missing"
    collector_t = top.table("collector", required=True,
                            hint='add [collector] with role, region and database')
    section = _collector(collector_t, base)
    broker_t = top.table("broker", required=True,
                         hint="add [broker] with url, ca_file, cert_file and key_file")
    broker = _broker(broker_t, base)
    if not section.trusted_ca:
        if broker.ca_file is None:
            raise collector_t.error("trusted_ca", "is missing; gateway certificates must chain "
                                                  "to a trusted CA: set trusted_ca (or "
                                                  "broker.ca_file)")
        section = dataclasses.replace(section, trusted_ca=(broker.ca_file,))
    upstreams = _upstreams(top, base)
    return CollectorConfig(source=file.resolve(), collector=section, broker=broker,
                           upstreams=tuple(upstreams))


# ---------------------------------------------------------------- [collector]

def _collector(t: Table, base: Path) -> CollectorSection:
    """The ``[collector]`` table; ``trusted_ca`` is left empty when absent (the caller
    defaults it to the broker's CA)."""
    role = t.choice("role", ROLES)
    region = t.get("region", str, required=role == "province",
                   hint='the province\'s GB/T 2260 code, e.g. region = "320000"')
    if region is not None:
        try:
            region = validate_region_code(region)
        except ValueError as exc:
            raise t.error("region", str(exc)) from None
    database = _database(t, base)
    cas = t.texts("trusted_ca")
    if cas == []:
        raise t.error("trusted_ca", "is empty; name at least one CA certificate file")
    trusted = tuple(_existing(t, "trusted_ca", base, ca) for ca in cas or ())
    queue = t.integer("queue", 10_000, 1, 10_000_000, "messages")
    t.done()
    return CollectorSection(role=role, region=region or "", database=database,
                            trusted_ca=trusted, queue=queue)


def _database(t: Table, base: Path) -> str:
    """The ``database`` URL, a relative SQLite path made absolute against ``base``."""
    url = t.req("database", str, hint='e.g. database = "sqlite:collector.db" or '
                                     '"postgresql://kemon@db.example/kemon"')
    if url.startswith("sqlite:"):
        try:
            path = sqlite_path(url, base)
        except StorageURLError as exc:
            raise t.error("database", _url_problem(exc)) from None
        return "sqlite://" + quote(str(path.resolve()))
    if url.startswith(("postgresql://", "postgres://")):
        from psycopg import Error as PsycopgError
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = conninfo_to_dict(url)
        except PsycopgError as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise t.error("database", f"{redact_url(url)} is not a PostgreSQL URL libpq "
                                      f"accepts: {redact_url(detail)}") from None
        for port in str(params.get("port") or "5432").split(","):
            if not (port.isdigit() and 0 < int(port) < 65536):
                raise t.error("database", f"{redact_url(url)}: {port!r} is not a TCP port")
        return url
    raise t.error("database", f"{redact_url(url)!r} is not a database URL: use "
                              "sqlite:///abs/path.db, sqlite:relative/path.db or "
                              "postgresql://user@host:port/db")


def _url_problem(exc: StorageURLError) -> str:
    """The message of ``exc`` without its ``database URL:`` prefix (the key says it)."""
    text = str(exc)
    prefix = f"database {exc.url}: "
    return f"{exc.url}: {text.removeprefix(prefix)}"


# ---------------------------------------------------------------- broker and upstreams

def _existing(t: Table, key: str, base: Path, value: str) -> Path:
    path = (base / value).resolve()
    if not path.is_file():
        raise t.error(key, f"no such file: {path}")
    return path


def _endpoint(t: Table, base: Path) -> tuple[str, bool, dict[str, Path | None]]:
    """``url``, ``insecure`` and the TLS files of a broker or upstream table."""
    url = t.req("url", str, hint='e.g. url = "mqtts://broker.example.gov.cn:8883"')
    insecure = t.get("insecure", bool, False)
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("mqtts", "mqtt") or not parts.hostname or port == -1 \
            or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise t.error("url", f"{url!r} is not an MQTT broker URL: mqtts://host:port")
    if parts.scheme == "mqtt" and not insecure:
        raise t.error("url", "plain mqtt:// is neither encrypted nor authenticated; use "
                             "mqtts://, or set insecure = true for a test broker")
    files: dict[str, Path | None] = {}
    for key in ("ca_file", "cert_file", "key_file"):
        value = t.get(key, str)
        if value is None and parts.scheme == "mqtts":
            raise t.error(key, "is missing; mqtts:// needs ca_file (to verify the broker), "
                               "cert_file and key_file (this collector's identity)")
        files[key] = None if value is None else _existing(t, key, base, value)
    return url, insecure, files


def _broker(t: Table, base: Path) -> BrokerConfig:
    url, insecure, files = _endpoint(t, base)
    group = t.get("share_group", str, "collectors")
    if not group or len(group) > SHARE_GROUP_MAX or _SHARE_FORBIDDEN & set(group):
        raise t.error("share_group", f"{group!r} is not a share group: one MQTT topic level "
                                     f"of 1-{SHARE_GROUP_MAX} characters without / + #")
    client_id = t.get("client_id", str)
    if client_id is not None and not CLIENT_ID_RE.fullmatch(client_id):
        raise t.error("client_id", f"{client_id!r} is not a client id: 1-64 of "
                                   "A-Z a-z 0-9 _ . : - (and unique per collector process)")
    keepalive = t.integer("keepalive", 30, 5, 3600, "seconds")
    t.done()
    return BrokerConfig(url=url, ca_file=files["ca_file"], cert_file=files["cert_file"],
                        key_file=files["key_file"], share_group=group, client_id=client_id,
                        keepalive=keepalive, insecure=insecure)


def _upstreams(top: Table, base: Path) -> list[UpstreamConfig]:
    out: list[UpstreamConfig] = []
    seen: set[str] = set()
    for t in top.tables("upstream"):
        name = t.req("name", str, hint='e.g. name = "national"')
        if not NAME_RE.fullmatch(name):
            raise t.error("name", f"{name!r} is not an upstream name: 1-64 of "
                                  "A-Z a-z 0-9 _ . -")
        if name in seen:
            raise t.error("name", f"upstream {name!r} is defined twice; names are unique "
                                  "(each keeps its own relay cursor)")
        seen.add(name)
        url, insecure, files = _endpoint(t, base)
        rate = t.number("rate_limit", 200.0, above=0, unit="batches per second")
        # 65535: the largest Receive Maximum (MQTT 5.0 §3.1.2.11.3), i.e. packet ids in flight
        inflight = t.integer("max_inflight", 64, 1, 65535)
        keepalive = t.integer("keepalive", 30, 5, 3600, "seconds")
        t.done()
        out.append(UpstreamConfig(name=name, url=url, ca_file=files["ca_file"],
                                  cert_file=files["cert_file"], key_file=files["key_file"],
                                  insecure=insecure, rate_limit=rate, max_inflight=inflight,
                                  keepalive=keepalive))
    return out
