"""The platform half of ``kemon demo``: a province and the national platform, provisioned and
started as docs/provisioning.md tells an operator to do it.

``provision`` runs the real ``kemon provision`` commands for each level (a CA, the broker's
server certificate, a Mosquitto configuration with mutual TLS and the topic ACL, a collector
identity), the province's relay identity issued by the national CA, and a gateway identity,
echoing each command line and what it printed; ``start_broker`` and ``start_collector`` start
Mosquitto and ``kemon collector run`` on what was written. Nothing here is demo-only
cryptography: the gateway reaches the province, and the province the national platform, through
the same certificate checks a production site passes.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

__all__ = ["Platform", "collector_totals", "mosquitto_binary", "provision", "run_kemon",
           "start_broker", "start_collector"]

COLLECTOR = "demo"          # the province collector's name (CN collector-demo)
RELAY = "js"                # the province's name at the national broker (CN collector-js)
NATIONAL = "national"       # the national collector's name


@dataclass(frozen=True)
class Platform:
    """One level of the platform under the demo directory: its CA, broker and collector."""

    root: Path
    port: int

    @property
    def ca(self) -> Path:
        return self.root / "ca"

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def collector_config(self) -> Path:
        return self.root / "collector" / "collector.toml"

    @property
    def collector_db(self) -> Path:
        return self.root / "collector" / "collector.db"

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"


def mosquitto_binary() -> str:
    """Debian installs the broker in /usr/sbin, which is not on every user's PATH."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise click.ClickException("mosquitto is not installed: make demo installs it "
                                   "(apt-get install mosquitto)")
    return found


def run_kemon(echo: Callable[[str], None], *args: str, check: bool = True) -> int:
    """Run ``kemon ARGS`` as a user would, echoing the command line and what it printed."""
    shown = " ".join(f"'{a}'" if " " in a else a for a in args)
    echo(f"  $ kemon {shown}")
    res = subprocess.run([sys.executable, "-m", "kemon", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, check=False)
    for line in res.stdout.splitlines():
        echo(f"    {line}")
    if check and res.returncode != 0:
        raise click.ClickException(f"'kemon {args[0]} {args[1]}' failed (exit {res.returncode})")
    return res.returncode


def _level(echo: Callable[[str], None], p: Platform, ca_name: str, collector: str,
           relays: tuple[str, ...] = ()) -> None:
    """A CA, the broker's identity and configuration, and a collector identity."""
    run_kemon(echo, "provision", "ca", "init", "--dir", str(p.ca), "--name", ca_name)
    run_kemon(echo, "provision", "server", "--ca-dir", str(p.ca), "--host", "127.0.0.1",
              "--host", "localhost", "--out", str(p.root / "broker-id"))
    # the broker runs as whoever runs the demo (Mosquitto would otherwise drop to 'mosquitto',
    # which cannot read a private checkout)
    run_kemon(echo, "provision", "broker", "--ca-dir", str(p.ca), "--server-dir",
              str(p.root / "broker-id"), "--port", str(p.port), "--collector", collector,
              *(a for r in relays for a in ("--relay", r)), "--user", getpass.getuser(),
              "--out", str(p.broker))
    run_kemon(echo, "provision", "collector", "--ca-dir", str(p.ca), "--name", collector,
              "--out", str(p.collector_config.parent))


def _broker_table(p: Platform) -> str:
    return (f"[broker]\nurl = \"{p.url}\"\nca_file = \"ca.pem\"\n"
            "cert_file = \"collector.pem\"\nkey_file = \"collector.key\"\n")


def provision(root: Path, *, port: int, national_port: int, unit: str, gateway: str,
              gateway_dir: Path, echo: Callable[[str], None]) -> tuple[Platform, Platform]:
    """Provision a province in ``root`` relaying to a national platform in ``root/national``
    (a CA of its own), and a gateway identity in ``gateway_dir``; returns (province,
    national)."""
    p, n = Platform(root, port), Platform(root / "national", national_port)
    root.mkdir(parents=True, exist_ok=True)
    echo("  the province (Jiangsu, 320000):")
    _level(echo, p, "Kemon Demo Jiangsu CA", COLLECTOR)
    run_kemon(echo, "provision", "gateway", "--ca-dir", str(p.ca), "--unit", unit, "--id",
              gateway, "--destination", f"province={p.url}", "--out", str(gateway_dir))
    echo("  the national platform, which the province relays to (数据对接):")
    _level(echo, n, "Kemon Demo National CA", NATIONAL, relays=(RELAY,))
    relay_id = p.collector_config.parent / "national-id"
    run_kemon(echo, "provision", "collector", "--ca-dir", str(n.ca), "--name", RELAY,
              "--out", str(relay_id))
    p.collector_config.write_text(
        "# Written by 'kemon demo': the province collector (docs/collector.md)\n"
        "[collector]\nrole = \"province\"\nregion = \"320000\"\n"
        "database = \"sqlite:collector.db\"\n\n" + _broker_table(p)
        + f"\n[[upstream]]\nname = \"national\"\nurl = \"{n.url}\"\n"
        "ca_file = \"national-id/ca.pem\"\ncert_file = \"national-id/collector.pem\"\n"
        "key_file = \"national-id/collector.key\"\n", encoding="utf-8")
    # gateways' certificates come from the province's CA: the national collector trusts it
    shutil.copyfile(p.ca / "ca.pem", n.collector_config.parent / "province-ca.pem")
    n.collector_config.write_text(
        "# Written by 'kemon demo': the national collector (docs/collector.md)\n"
        "[collector]\nrole = \"national\"\ndatabase = \"sqlite:collector.db\"\n"
        "trusted_ca = [\"province-ca.pem\"]\n\n" + _broker_table(n), encoding="utf-8")
    return p, n


def start_broker(p: Platform, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([mosquitto_binary(), "-c", str(p.broker / "mosquitto.conf")],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def start_collector(p: Platform, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "kemon", "collector", "run", "-c",
                                 str(p.collector_config)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def collector_totals(p: Platform) -> tuple[int, int]:
    """(readings, batches) the collector has stored so far, from its inventory (what
    ``kemon collector status`` shows; safe while it runs)."""
    if not p.collector_db.exists():
        return 0, 0
    from collector._storage import open_storage

    storage = open_storage(f"sqlite://{p.collector_db.resolve()}")
    try:
        rows = storage.gateways()
    finally:
        storage.close()
    return sum(r.readings for r in rows), sum(r.batches for r in rows)
