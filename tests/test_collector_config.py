"""The collector's configuration: a good file loads into absolute, typed settings; every kind of
bad file is one located error (file, key path, what to do)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from collector._config import ConfigError, load_config
from provisioning import make_ca, make_collector_cert, write_cert, write_key

GOOD = """
[collector]
role = "province"
region = "320000"
database = "sqlite:data/collector.db"
queue = 500

[broker]
url = "mqtts://127.0.0.1:8883"
ca_file = "ca.pem"
cert_file = "collector.pem"
key_file = "collector.key"
share_group = "js-collectors"
client_id = "js-collector-1"
keepalive = 45

[[upstream]]
name = "national"
url = "mqtts://national.example.gov.cn:8883"
ca_file = "ca.pem"
cert_file = "collector.pem"
key_file = "collector.key"
rate_limit = 50
max_inflight = 16

[[upstream]]
name = "backup"
url = "mqtt://127.0.0.1:1883"
insecure = true
"""

MINIMAL = """
[collector]
role = "province"
region = "320000"
database = "sqlite:collector.db"

[broker]
url = "mqtts://127.0.0.1:8883"
ca_file = "ca.pem"
cert_file = "collector.pem"
key_file = "collector.key"
"""

COLLECTOR_ONLY = MINIMAL.partition("[broker]")[0]

Writer = Callable[..., Path]


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A CA and a collector identity (file name → PEM bytes), made once for the module."""
    d = tmp_path_factory.mktemp("identity")
    ca_key, ca = make_ca("Kemon Test CA")
    key, cert = make_collector_cert(ca_key, ca, "js1")
    write_cert(d / "ca.pem", ca)
    write_cert(d / "collector.pem", cert)
    write_key(d / "collector.key", key)
    return {name: (d / name).read_bytes() for name in ("ca.pem", "collector.pem", "collector.key")}


@pytest.fixture
def write(tmp_path: Path, identity: dict[str, bytes]) -> Writer:
    """Write a configuration beside the identity files; returns its path."""
    for name, data in identity.items():
        (tmp_path / name).write_bytes(data)

    def write(text: str | bytes, name: str = "collector.toml") -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return write


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


# ---------------------------------------------------------------- good

def test_good_configuration_loads_with_absolute_paths(write: Writer, tmp_path: Path) -> None:
    cfg = load_config(write(GOOD))
    assert cfg.source == tmp_path / "collector.toml"
    c = cfg.collector
    assert (c.role, c.region, c.queue) == ("province", "320000", 500)
    assert c.database == f"sqlite://{tmp_path}/data/collector.db"
    assert c.trusted_ca == (tmp_path / "ca.pem",)        # the broker's CA by default
    b = cfg.broker
    assert (b.url, b.share_group, b.client_id, b.keepalive, b.insecure) == (
        "mqtts://127.0.0.1:8883", "js-collectors", "js-collector-1", 45, False)
    assert (b.ca_file, b.cert_file, b.key_file) == (
        tmp_path / "ca.pem", tmp_path / "collector.pem", tmp_path / "collector.key")
    national, backup = cfg.upstreams
    assert (national.name, national.rate_limit, national.max_inflight, national.keepalive) == (
        "national", 50.0, 16, 30)
    assert national.key_file == tmp_path / "collector.key"
    assert (backup.name, backup.url, backup.insecure, backup.ca_file) == (
        "backup", "mqtt://127.0.0.1:1883", True, None)


def test_defaults(write: Writer) -> None:
    cfg = load_config(write(MINIMAL))
    assert cfg.collector.queue == 10_000
    assert (cfg.broker.share_group, cfg.broker.client_id, cfg.broker.keepalive) == (
        "collectors", None, 30)
    assert cfg.upstreams == ()


def test_relative_paths_are_relative_to_the_file_not_the_working_directory(
        write: Writer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(MINIMAL)
    monkeypatch.chdir("/")
    cfg = load_config(path)
    assert cfg.collector.database == f"sqlite://{tmp_path}/collector.db"
    assert cfg.broker.ca_file == tmp_path / "ca.pem"


@pytest.mark.parametrize("database", [
    "postgresql://kemon@db.example:5432/kemon",
    "postgres://kemon:secret@10.0.0.9/kemon?sslmode=verify-full",
    "postgresql://kemon@/kemon?host=/run/postgresql",
    "sqlite:////var/lib/kemon/collector.db",
])
def test_other_database_urls(write: Writer, database: str) -> None:
    text = MINIMAL.replace('"sqlite:collector.db"', f'"{database}"')
    cfg = load_config(write(text))
    expected = ("sqlite:///var/lib/kemon/collector.db" if database.startswith("sqlite")
                else database)
    assert cfg.collector.database == expected


def test_national_needs_no_region_and_takes_trusted_cas(write: Writer, tmp_path: Path) -> None:
    text = MINIMAL.replace('role = "province"\nregion = "320000"',
                           'role = "national"\ntrusted_ca = ["ca.pem", "collector.pem"]')
    cfg = load_config(write(text))
    assert (cfg.collector.role, cfg.collector.region) == ("national", "")
    assert cfg.collector.trusted_ca == (tmp_path / "ca.pem", tmp_path / "collector.pem")


def test_insecure_broker_without_files_needs_trusted_ca(write: Writer, tmp_path: Path) -> None:
    text = """
[collector]
role = "province"
region = "110000"
database = "sqlite:c.db"
trusted_ca = "ca.pem"

[broker]
url = "mqtt://127.0.0.1:1883"
insecure = true
"""
    cfg = load_config(write(text))
    assert cfg.broker.ca_file is None and cfg.broker.insecure
    assert cfg.collector.trusted_ca == (tmp_path / "ca.pem",)
    err = error_of(write(text.replace('trusted_ca = "ca.pem"\n', "")))
    assert err.key == "collector.trusted_ca"
    assert "trusted" in err.message


# ---------------------------------------------------------------- bad: located keys

def edit(old: str, new: str, base: str = GOOD) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


BAD = [
    # (name, text, key, words in the message)
    ("no collector", COLLECTOR_ONLY.replace("[collector]", "[collectors]"),
     "collectors", "unknown key"),
    ("missing collector", "[broker]\nurl = \"mqtts://h:1\"\n", "collector", "is missing"),
    ("missing broker", COLLECTOR_ONLY, "broker", "is missing"),
    ("collector not a table", 'collector = "x"\n[broker]\nurl="mqtt://h"\n', "collector",
     "must be a table"),
    ("bad role", edit('role = "province"', 'role = "city"'), "collector.role",
     "not one of: province, national"),
    ("missing role", edit('role = "province"\n', ""), "collector.role", "is missing"),
    ("role not text", edit('role = "province"', "role = 1"), "collector.role",
     "must be a string, not an integer 1"),
    ("region missing", edit('region = "320000"\n', ""), "collector.region", "is missing"),
    ("region short", edit('region = "320000"', 'region = "3200"'), "collector.region",
     "6 digits"),
    ("region no province", edit('region = "320000"', 'region = "990000"'), "collector.region",
     "no province"),
    ("region a number", edit('region = "320000"', "region = 320000"), "collector.region",
     "must be a string"),
    ("database missing", edit('database = "sqlite:data/collector.db"\n', ""),
     "collector.database", "is missing"),
    ("database mysql", edit('"sqlite:data/collector.db"', '"mysql://h/db"'),
     "collector.database", "not a database URL"),
    ("database memory", edit('"sqlite:data/collector.db"', '"sqlite::memory:"'),
     "collector.database", "needs a file"),
    ("database sqlite host", edit('"sqlite:data/collector.db"', '"sqlite://host/x.db"'),
     "collector.database", "no host"),
    ("database sqlite query", edit('"sqlite:data/collector.db"', '"sqlite:x.db?mode=ro"'),
     "collector.database", "no query"),
    ("database pg query", edit('"sqlite:data/collector.db"', '"postgresql://h/db?bogus=1"'),
     "collector.database", "bogus"),
    ("database pg port", edit('"sqlite:data/collector.db"', '"postgresql://h:99999/db"'),
     "collector.database", "not a TCP port"),
    ("queue zero", edit("queue = 500", "queue = 0"), "collector.queue", "out of range"),
    ("queue float", edit("queue = 500", "queue = 5.5"), "collector.queue",
     "must be an integer"),
    ("trusted_ca missing file", edit("queue = 500", 'trusted_ca = "nope.pem"'),
     "collector.trusted_ca", "no such file"),
    ("trusted_ca empty", edit("queue = 500", "trusted_ca = []"), "collector.trusted_ca",
     "is empty"),
    ("trusted_ca numbers", edit("queue = 500", "trusted_ca = [1]"), "collector.trusted_ca",
     "array of strings"),
    ("unknown collector key", edit("queue = 500", "queue = 500\nregoin = \"1\""),
     "collector.regoin", "allowed here: database, queue, region, role, trusted_ca"),
    ("broker url missing", edit('url = "mqtts://127.0.0.1:8883"\n', ""), "broker.url",
     "is missing"),
    ("broker http", edit('"mqtts://127.0.0.1:8883"', '"https://127.0.0.1"'), "broker.url",
     "not an MQTT broker URL"),
    ("broker no host", edit('"mqtts://127.0.0.1:8883"', '"mqtts://:8883"'), "broker.url",
     "not an MQTT broker URL"),
    ("broker bad port", edit('"mqtts://127.0.0.1:8883"', '"mqtts://h:port"'), "broker.url",
     "not an MQTT broker URL"),
    ("broker path", edit('"mqtts://127.0.0.1:8883"', '"mqtts://h:8883/x"'), "broker.url",
     "not an MQTT broker URL"),
    ("broker plain mqtt", edit('"mqtts://127.0.0.1:8883"', '"mqtt://127.0.0.1:1883"'),
     "broker.url", "insecure = true"),
    ("broker insecure not bool", edit('share_group = "js-collectors"', 'insecure = "yes"'),
     "broker.insecure", "true or false"),
    ("broker ca missing", edit('ca_file = "ca.pem"\n', ""), "broker.ca_file",
     "mqtts:// needs ca_file"),
    ("broker key file absent", edit('key_file = "collector.key"', 'key_file = "gone.key"'),
     "broker.key_file", "no such file"),
    ("share group slash", edit('"js-collectors"', '"a/b"'), "broker.share_group",
     "without / + #"),
    ("share group plus", edit('"js-collectors"', '"a+"'), "broker.share_group", "/ + #"),
    ("share group hash", edit('"js-collectors"', '"#"'), "broker.share_group", "/ + #"),
    ("share group empty", edit('"js-collectors"', '""'), "broker.share_group", "/ + #"),
    ("client id space", edit('"js-collector-1"', '"js collector"'), "broker.client_id",
     "not a client id"),
    ("keepalive small", edit("keepalive = 45", "keepalive = 1"), "broker.keepalive",
     "out of range: 5..3600 seconds"),
    ("unknown broker key", edit("keepalive = 45", "keepalive = 45\nqos = 1"), "broker.qos",
     "allowed here: ca_file, cert_file, client_id, insecure, keepalive, key_file, "
     "share_group, url"),
    ("upstream names twice", edit('name = "backup"', 'name = "national"'), "upstream[1].name",
     "defined twice"),
    ("upstream name missing", edit('name = "backup"\n', ""), "upstream[1].name", "is missing"),
    ("upstream bad name", edit('name = "backup"', 'name = "back up"'), "upstream[1].name",
     "not an upstream name"),
    ("upstream plain mqtt", edit("insecure = true\n", ""), "upstream[1].url",
     "insecure = true"),
    ("upstream rate zero", edit("rate_limit = 50", "rate_limit = 0"), "upstream[0].rate_limit",
     "above 0"),
    ("upstream rate inf", edit("rate_limit = 50", "rate_limit = inf"),
     "upstream[0].rate_limit", "above 0"),
    ("upstream inflight", edit("max_inflight = 16", "max_inflight = 70000"),
     "upstream[0].max_inflight", "1..65535"),
    ("upstream cert missing", edit('cert_file = "collector.pem"\nkey_file = "collector.key"\n'
                                   'rate_limit', 'key_file = "collector.key"\nrate_limit'),
     "upstream[0].cert_file", "is missing"),
    ("upstream unknown key", edit("max_inflight = 16", "max_inflight = 16\nbridge = true"),
     "upstream[0].bridge", "unknown key"),
    ("upstream not tables", 'upstream = "national"\n' + MINIMAL, "upstream",
     "array of tables"),
    ("upstream item not a table", "upstream = [1]\n" + MINIMAL, "upstream[0]",
     "must be a table"),
    ("unknown top-level table", MINIMAL + "[gateway]\nid = \"GW1\"\n", "gateway",
     "allowed here: broker, collector, upstream"),
]


@pytest.mark.parametrize(("text", "key", "words"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_configuration_is_located(write: Writer, tmp_path: Path, text: str, key: str,
                                      words: str) -> None:
    path = write(text)
    err = error_of(path)
    assert (err.file, err.key) == (str(path), key), str(err)
    assert words in err.message, str(err)
    assert str(err).startswith(f"{path}: {key}: ")
    assert "\n" not in str(err)


def test_a_password_never_appears_in_an_error(write: Writer) -> None:
    err = error_of(write(edit('"sqlite:data/collector.db"',
                              '"postgresql://kemon:hunter2@h/db?bogus=1"')))
    assert err.key == "collector.database"
    assert "hunter2" not in str(err) and "***" in str(err)


# ---------------------------------------------------------------- bad: the whole file

@pytest.mark.parametrize(("content", "words"), [
    (b"\xff\xfe\x00garbage\x00", "not UTF-8"),
    (b"role = \xe7\xbb\n", "not UTF-8"),
    (b"[collector\nrole = 1\n", "not valid TOML"),
    (b"[collector]\nrole = \n", "not valid TOML"),
    (bytes(range(256)) * 4, "not UTF-8"),
    (b"", "collector: is missing"),
])
def test_garbage_is_one_line(write: Writer, content: bytes, words: str) -> None:
    path = write(content)
    err = error_of(path)
    assert words in str(err), str(err)
    assert str(err).startswith(str(path))
    assert "\n" not in str(err)


def test_unreadable_file(tmp_path: Path) -> None:
    err = error_of(tmp_path / "absent.toml")
    assert "cannot read" in str(err) and "absent.toml" in str(err)
    err = error_of(tmp_path)
    assert "cannot read" in str(err)


def test_the_documented_example_loads(write: Writer, tmp_path: Path,
                                      identity: dict[str, bytes]) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "collector.md").read_text(
        encoding="utf-8")
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    for name, source in (("national-ca.pem", "ca.pem"), ("province.pem", "collector.pem"),
                         ("province.key", "collector.key")):
        (tmp_path / name).write_bytes(identity[source])
    cfg = load_config(write(example))
    assert (cfg.collector.role, cfg.collector.region) == ("province", "320000")
    assert cfg.collector.database == "sqlite:///var/lib/kemon/collector.db"
    assert [u.name for u in cfg.upstreams] == ["national"]
    assert cfg.upstreams[0].ca_file == tmp_path / "national-ca.pem"
