"""``kemon provision``: a certificate authority and the identities it issues (CONTRACT.md).

    kemon provision ca init --dir DIR --name NAME      ca.pem, ca.key (0600), ca.crl
    kemon provision server --ca-dir DIR --host H… --out OUT
    kemon provision gateway --ca-dir DIR --unit U --id G --out OUT [--destination NAME=URL]…
    kemon provision collector --ca-dir DIR --name NAME --out OUT
    kemon provision broker --ca-dir DIR --server-dir SRV --out OUT [--collector N]…
    kemon provision revoke --ca-dir DIR CERT…           re-issues ca.crl
    kemon provision image --image FILE.img --bundle DIR [--hat NAME]… [--firewall FILE.nft]
                                                        the gateway's first boot on an SD card

Keys are ECDSA P-256, written 0600 and never printed; an existing key or certificate is never
replaced unless ``--force`` is given. Everything is done with ``cryptography``
(``provisioning._pki``), no openssl. Bad input is one line and exit 2.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import shutil
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from protocol import validate_credit_code, validate_gateway_id
from protocol._cli import BadInput, Failure, one_line

from ._hardware import Hat, hat_names
from ._pki import (
    PkiError,
    collector_common_name,
    load_cert,
    load_crl,
    load_key,
    make_ca,
    make_collector_cert,
    make_crl,
    make_gateway_cert,
    make_server_cert,
    write_cert,
    write_crl,
    write_key,
)

__all__ = ["provision_group"]

_FORCE = click.option("--force", is_flag=True,
                      help="Replace existing key and certificate files (otherwise refused).")
_CA_DIR = click.option("--ca-dir", "ca_dir", required=True, metavar="DIR",
                       type=click.Path(file_okay=False, path_type=Path),
                       help="The CA's folder (ca.pem, ca.key), as made by 'ca init'.")
_OUT = click.option("--out", required=True, metavar="OUT",
                    type=click.Path(file_okay=False, path_type=Path),
                    help="Folder to write into (created if missing).")


@click.group("provision")
def provision_group() -> None:
    """Make a certificate authority and the identities it issues: broker servers, gateways,
    collectors; revoke them.

    \b
    Example, a province from scratch:
      kemon provision ca init --dir ca --name "Kemon Jiangsu CA"
      kemon provision server --ca-dir ca --host broker.js.example --host 10.0.0.5 --out broker
      kemon provision collector --ca-dir ca --name js1 --out collector
      kemon provision gateway --ca-dir ca --unit 91320100MA1ABCDE0C --id GW0001 \\
          --destination province=mqtts://broker.js.example:8883 --out gw0001
    """


@provision_group.group("ca")
def ca_group() -> None:
    """The certificate authority.

    \b
    Example:
      kemon provision ca init --dir /etc/kemon/ca --name "Kemon Jiangsu CA"
    """


@ca_group.command("init")
@click.option("--dir", "directory", required=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path), help="Folder for the CA.")
@click.option("--name", required=True, help="The CA's common name.")
@click.option("--days", type=click.IntRange(1, 36500), default=3650, show_default=True,
              help="Validity in days.")
@_FORCE
def ca_init(directory: Path, name: str, days: int, force: bool) -> None:
    """Create a CA: ca.pem, ca.key (mode 0600) and an empty revocation list ca.crl.

    \b
    Example:
      kemon provision ca init --dir /etc/kemon/ca --name "Kemon Jiangsu CA"
    """
    if not name.strip():
        raise BadInput("--name: the CA needs a name")
    key, cert = make_ca(name, days)
    _write_identity(directory, "ca", key, [cert], force)
    write_crl(directory / "ca.crl", make_crl(key, cert, ()), overwrite=True)
    _report(directory / "ca.pem", cert)
    click.echo(f"wrote {directory / 'ca.key'} (mode 0600) and {directory / 'ca.crl'}")


@provision_group.command("server")
@_CA_DIR
@click.option("--host", "hosts", required=True, multiple=True, metavar="HOST",
              help="A DNS name or IP address the broker is reached at (repeat for more).")
@_OUT
@_FORCE
def server_command(ca_dir: Path, hosts: Sequence[str], out: Path, force: bool) -> None:
    """A broker's server certificate (serverAuth; the hosts as subject alternative names):
    server.pem, server.key, ca.pem.

    \b
    Example:
      kemon provision server --ca-dir ca --host broker.js.example --host 10.0.0.5 --out broker
    """
    _issue(ca_dir, out, "server", force, "--host",
           lambda ca_key, ca_cert: make_server_cert(ca_key, ca_cert, list(hosts)))


@provision_group.command("collector")
@_CA_DIR
@click.option("--name", required=True, help="The collector's name (its CN is collector-NAME).")
@_OUT
@_FORCE
def collector_command(ca_dir: Path, name: str, out: Path, force: bool) -> None:
    """A collector identity (clientAuth): collector.pem, collector.key, ca.pem.

    \b
    Example:
      kemon provision collector --ca-dir ca --name js1 --out collector
    """
    _issue(ca_dir, out, "collector", force, "--name",
           lambda ca_key, ca_cert: make_collector_cert(ca_key, ca_cert, name))


@provision_group.command("gateway")
@_CA_DIR
@click.option("--unit", required=True, help="The unit's unified social credit code (GB 32100).")
@click.option("--id", "gateway", required=True, help="The gateway id within the unit.")
@click.option("--destination", "destinations", multiple=True, metavar="NAME=URL",
              help="A platform it reports to, e.g. province=mqtts://broker:8883 (repeat).")
@_OUT
@_FORCE
def gateway_command(ca_dir: Path, unit: str, gateway: str, destinations: Sequence[str],
                    out: Path, force: bool) -> None:
    """A gateway identity (clientAuth, CN UNIT/ID): gateway.pem, gateway.key, ca.pem, and a
    starting gateway.toml with its destinations filled in (add buses and meters to it).

    \b
    Example:
      kemon provision gateway --ca-dir ca --unit 91320100MA1ABCDE0C --id GW0001 \\
          --destination province=mqtts://broker.js.example:8883 --out gw0001
    """
    try:
        unit = validate_credit_code(unit)
    except ValueError as exc:
        raise BadInput(f"--unit: {one_line(exc)}") from None
    try:
        validate_gateway_id(gateway)
    except ValueError as exc:
        raise BadInput(f"--id: {one_line(exc)}") from None
    dests = [_destination(d) for d in destinations]
    if len({n for n, _ in dests}) != len(dests):
        raise BadInput("--destination: names must be unique")
    config = out / "gateway.toml"
    if config.exists() and not force:
        raise BadInput(f"{config} exists; refusing to overwrite it (use --force)")
    _issue(ca_dir, out, "gateway", force, "--id",
           lambda ca_key, ca_cert: make_gateway_cert(ca_key, ca_cert, unit, gateway))
    config.write_text(_gateway_toml(unit, gateway, dests), encoding="utf-8")
    click.echo(f"wrote {config}: check it with 'kemon gateway check -c {config}'")


@provision_group.command("broker")
@_CA_DIR
@click.option("--server-dir", "server_dir", required=True, metavar="SRV",
              type=click.Path(file_okay=False, path_type=Path),
              help="The broker's identity (server.pem, server.key), as made by 'server'.")
@click.option("--port", type=click.IntRange(1, 65535), default=8883, show_default=True,
              help="TCP port of the TLS listener (IANA secure-mqtt: 8883).")
@click.option("--kind", type=click.Choice(["mosquitto", "emqx"]), default="mosquitto",
              show_default=True, help="The broker software: Mosquitto 2.0, or EMQX 5 (5.1 on).")
@click.option("--bind", default=None, metavar="ADDRESS",
              help="Listen on this address only (default: every interface).")
@click.option("--collector", "collectors", multiple=True, metavar="NAME",
              help="A collector (CN collector-NAME) that reads every gateway (repeat).")
@click.option("--relay", "relays", multiple=True, metavar="NAME",
              help="A lower-level collector allowed to relay into this broker (repeat).")
@click.option("--user", default=None,
              help="The user the broker runs as (default: mosquitto, or emqx); it must be "
                   "able to read the files in OUT.")
@_OUT
@click.option("--force", is_flag=True,
              help="Replace an existing broker configuration in OUT (otherwise refused).")
def broker_command(ca_dir: Path, server_dir: Path, port: int, kind: str, bind: str | None,
                   collectors: Sequence[str], relays: Sequence[str], user: str | None, out: Path,
                   force: bool) -> None:
    """A broker configuration with mutual TLS 1.2+, the client certificate's CN as user name,
    anonymous clients refused, persistence on, the topic ACL, and copies of ca.pem, ca.crl,
    server.pem and server.key in OUT.

    Mosquitto: OUT/mosquitto.conf and OUT/acl; `mosquitto -c OUT/mosquitto.conf` starts it as
    written. EMQX: OUT/emqx-kemon.hocon (the TLS listener with verify_peer and
    fail_if_no_peer_cert, peer_cert_as_username, the other listeners off) and OUT/acl.conf
    (ending in deny); include the first at the end of emqx.conf and restart EMQX.

    \b
    Examples:
      kemon provision broker --ca-dir ca --server-dir broker-id --collector js1 \\
          --relay js --out /etc/mosquitto/kemon
      kemon provision broker --kind emqx --ca-dir ca --server-dir broker-id \\
          --collector js1 --out /etc/emqx/kemon
    """
    from ._emqx import emqx_acl, emqx_listener_conf
    from ._mosquitto import mosquitto_acl, mosquitto_conf

    for name in (*collectors, *relays):
        try:
            collector_common_name(name)
        except (PkiError, ValueError) as exc:
            raise BadInput(f"--collector/--relay: {one_line(exc)}") from None
    if bind is not None:
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            raise BadInput(f"--bind: {bind!r} is not an IP address") from None
    _load_ca(ca_dir)
    for path in (server_dir / "server.pem", server_dir / "server.key"):
        if not path.is_file():
            raise BadInput(f"--server-dir: {path} not found (make it with 'kemon provision "
                           "server')")
    user = user or kind
    conf, acl = ((out / "mosquitto.conf", out / "acl") if kind == "mosquitto" else
                 (out / "emqx-kemon.hocon", out / "acl.conf"))
    if conf.exists() and not force:
        raise BadInput(f"{conf} exists; refusing to overwrite it (use --force)")
    out.mkdir(parents=True, exist_ok=True)
    copies = [(ca_dir / "ca.pem", out / "ca.pem", 0o644), (ca_dir / "ca.crl", out / "ca.crl",
                                                           0o644),
              (server_dir / "server.pem", out / "server.pem", 0o644),
              (server_dir / "server.key", out / "server.key", 0o600)]
    for src, dst, mode in copies:
        dst.write_bytes(src.read_bytes())
        dst.chmod(mode)
    if kind == "mosquitto":
        (out / "data").mkdir(exist_ok=True)
        acl.write_text(mosquitto_acl(collectors, relays), encoding="utf-8")
        conf.write_text(mosquitto_conf(out, port=port, user=user, bind=bind), encoding="utf-8")
        _give_to(user, [out / "data", out / "server.key"])
    else:
        acl.write_text(emqx_acl(collectors, relays), encoding="utf-8")
        conf.write_text(emqx_listener_conf(out, port, bind), encoding="utf-8")
        _give_to(user, [out / "server.key"])
    click.echo(f"wrote {conf} ({kind}, port {port}), {acl} "
               f"({len(collectors)} collectors, {len(relays)} relays) and the TLS files")
    if kind == "mosquitto":
        click.echo(f"start it with: mosquitto -c {conf.resolve()}")
    else:
        click.echo(f"load it: add  include \"{conf.resolve()}\"  at the end of "
                   "/etc/emqx/emqx.conf and restart EMQX (docs/provisioning.md); EMQX does not "
                   "read ca.crl: ban a revoked gateway's CN instead")


def _give_to(user: str, paths: Sequence[Path]) -> None:
    """Let ``user`` (the broker's) own what it must read or write, when we may (as root)."""
    if os.geteuid() != 0 or user == "root":
        return
    try:
        pwd.getpwnam(user)
    except KeyError:
        click.echo(f"note: no user {user!r} here: give it {', '.join(map(str, paths))} "
                   "before starting the broker", err=True)
        return
    for path in paths:
        shutil.chown(path, user=user)


@provision_group.command("revoke")
@_CA_DIR
@click.argument("certs", nargs=-1, required=True, metavar="CERT...",
                type=click.Path(dir_okay=False, exists=True, path_type=Path))
def revoke_command(ca_dir: Path, certs: Sequence[Path]) -> None:
    """Add certificates to the CA's revocation list (ca.crl, re-issued with the next number).
    A broker reads its CRL at start: restart or reload it afterwards.

    \b
    Example:
      kemon provision revoke --ca-dir ca gw0001/gateway.pem
    """
    ca_key, ca_cert = _load_ca(ca_dir)
    crl_path = ca_dir / "ca.crl"
    revoked: set[int] = set()
    number = 1
    if crl_path.exists():
        try:
            crl = load_crl(crl_path)
        except ValueError as exc:
            raise BadInput(f"{crl_path}: not a PEM revocation list ({one_line(exc)})") from None
        revoked = {r.serial_number for r in crl}
        ext = crl.extensions.get_extension_for_class(x509.CRLNumber)
        number = ext.value.crl_number + 1
    for path in certs:
        try:
            cert = load_cert(path)
        except (ValueError, IndexError):
            raise BadInput(f"{path}: no PEM certificate in it") from None
        if cert.issuer != ca_cert.subject:
            raise BadInput(f"{path}: issued by {cert.issuer.rfc4514_string()}, not by this CA")
        revoked.add(cert.serial_number)
    write_crl(crl_path, make_crl(ca_key, ca_cert, revoked, crl_number=number))
    click.echo(f"wrote {crl_path}: {len(revoked)} revoked, CRL number {number}")


@provision_group.command("image")
@click.option("--image", required=True, metavar="FILE.img",
              type=click.Path(dir_okay=False, path_type=Path),
              help="A Raspberry Pi OS image (decompressed), or a bare FAT file system image.")
@click.option("--bundle", required=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="The gateway's folder, as 'kemon provision gateway --out DIR' wrote it.")
@click.option("--boot-path", type=click.Choice(["/boot/firmware", "/boot"]),
              default="/boot/firmware", show_default=True,
              help="Where the device mounts its boot partition (/boot before bookworm).")
@click.option("--hat", "hats", multiple=True, metavar="NAME",
              help="The RS-485 HAT's config.txt lines (hardware/rs485/config.txt.d/NAME.txt) "
                   f"to add to config.txt: {', '.join(hat_names())} (repeat for more).")
@click.option("--firewall", metavar="FILE.nft", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="An nftables ruleset adapted from hardware/nftables/kemon-gateway.nft, "
                   "checked with nft -c here and loaded at every boot of the device.")
@click.option("--force", is_flag=True,
              help="Replace a Kemon bundle already on the image (otherwise refused).")
def image_command(image: Path, bundle: Path, boot_path: str, hats: Sequence[str],
                  firewall: Path | None, force: bool) -> None:
    """Put a gateway's bundle (identity, gateway.toml, first-boot script, udev rules, and the
    site's firewall if given) into kemon/ on the FAT boot partition of an SD-card image,
    without mounting it (mtools), add the HAT's lines to config.txt, and hook the first boot
    in cmdline.txt. On that boot the device installs it (/etc/kemon, /etc/udev/rules.d,
    /etc/nftables.d), removes it from the boot partition, restores cmdline.txt and reboots
    (docs/sd-image.md).

    \b
    Example:
      kemon provision gateway --ca-dir ca --unit 91320100MA1ABCDE0C --id GW0001 \\
          --destination province=mqtts://broker.js.example:8883 --out gw0001
      kemon provision image --image 2024-11-19-raspios-bookworm-arm64-lite.img --bundle gw0001 \\
          --hat sc16is752-spi1 --firewall site.nft
    """
    from ._bundle import FIREWALL_FILE, UDEV_FILE, BundleError, check_bundle, put_bundle
    from ._hardware import HardwareError, check_ruleset, kemon_block, load_hat, udev_rules
    from ._image import FatImage, ImageError, find_volume

    try:
        chosen = [load_hat(name) for name in dict.fromkeys(hats)]
    except HardwareError as exc:
        raise BadInput(f"--hat: {one_line(exc)}") from None
    try:
        extra = {UDEV_FILE: udev_rules()}
    except HardwareError as exc:
        raise Failure(one_line(exc)) from None
    if firewall is not None:
        try:
            checked_how = check_ruleset(firewall)
        except HardwareError as exc:
            raise BadInput(f"--firewall: {firewall}: {one_line(exc)}") from None
        extra[FIREWALL_FILE] = firewall.read_bytes()
        click.echo(f"{firewall}: {checked_how}", err=checked_how.startswith("NOT"))
    # provisioning/data/kemon-gateway.service links to systemd/ in a checkout; a wheel holds
    # a copy of it
    unit_file = Path(str(resources.files("provisioning") / "data" / "kemon-gateway.service"))
    try:
        checked = check_bundle(bundle, unit_file if unit_file.is_file() else None, extra)
    except BundleError as exc:
        raise BadInput(f"--bundle: {one_line(exc)}") from None
    if image.is_file() and not os.access(image, os.R_OK | os.W_OK):
        raise BadInput(f"--image: {image} is not writable")
    try:
        volume = find_volume(image)
    except ImageError as exc:
        raise BadInput(f"--image: {image}: {one_line(exc)}") from None
    click.echo(f"{image}: boot partition is {volume.describe()}")
    try:
        block = kemon_block(chosen) if chosen else None
        written = put_bundle(FatImage(image, volume.offset), checked, boot_path, force, block)
    except BundleError as exc:
        raise BadInput(f"--image: {image}: {one_line(exc)}") from None
    except ImageError as exc:
        raise Failure(f"{image}: {one_line(exc)}") from None
    for path, length in written.files.items():
        click.echo(f"wrote {path} ({length} bytes)")
    if "kemon/systemd/kemon-gateway.service" not in written.files:
        click.echo("note: this installation has no kemon-gateway.service: the bundle carries "
                   "no unit; install it on the device yourself", err=True)
    _report_config(written.config_txt, block, chosen, written.cmdline)
    click.echo(f"cmdline.txt: {'appended' if written.hook_added else 'already has'} "
               f"{written.hook}")
    firewall_too = " and its firewall into /etc/nftables.d" if firewall is not None else ""
    click.echo(f"{'replaced the earlier bundle; ' if written.replaced else ''}on its first boot "
               f"gateway {checked.unit}/{checked.gateway} installs itself into /etc/kemon, its "
               f"udev rules into /etc/udev/rules.d{firewall_too}, removes kemon/ from "
               f"{boot_path} and reboots")


# --- helpers ------------------------------------------------------------------------------------

def _report_config(what: str, block: str | None, hats: Sequence[Hat], cmdline: str) -> None:
    """Say what became of config.txt (``Written.config_txt``) and what the HATs added."""
    for hat in hats:
        if not hat.lines:
            click.echo(f"nothing to add for {hat.name} (its snippet is only comments)")
    if what in ("appended", "replaced") and block:
        click.echo(f"config.txt: {what} {'the earlier Kemon block with ' * (what == 'replaced')}"
                   "these lines:")
        for line in block.splitlines():
            click.echo(f"  {line}")
    elif what == "removed":
        click.echo("config.txt: removed the earlier Kemon block (no HAT adds a line)")
    console = next((word for word in cmdline.split() if word.startswith("console=serial0")), "")
    if console and any("enable_uart=1" in hat.lines for hat in hats):
        click.echo(f"note: cmdline.txt has {console}: the kernel and a login would talk on the "
                   "RS-485 bus; take it out of cmdline.txt on the card (hardware/rs485/README.md, "
                   "'Disable the serial console')", err=True)


def _load_ca(ca_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key_path, cert_path = ca_dir / "ca.key", ca_dir / "ca.pem"
    for path in (key_path, cert_path):
        if not path.is_file():
            raise BadInput(f"--ca-dir: {path} not found (make the CA with 'kemon provision ca "
                           "init')")
    try:
        key, cert = load_key(key_path), load_cert(cert_path)
    except (PkiError, ValueError, IndexError) as exc:
        raise BadInput(f"--ca-dir: {one_line(exc)}") from None
    if key.public_key() != cert.public_key():
        raise BadInput(f"--ca-dir: {key_path} is not the key of {cert_path}")
    return key, cert


def _issue(ca_dir: Path, out: Path, stem: str, force: bool, option: str,
           make: Callable[[ec.EllipticCurvePrivateKey, x509.Certificate],
                          tuple[ec.EllipticCurvePrivateKey, x509.Certificate]]) -> None:
    """Make an identity with the CA in ``ca_dir`` and write ``stem``.key/.pem and ca.pem into
    ``out``; a refusal of the input is blamed on ``option``."""
    ca_key, ca_cert = _load_ca(ca_dir)
    try:
        key, cert = make(ca_key, ca_cert)
    except (PkiError, ValueError) as exc:
        raise BadInput(f"{option}: {one_line(exc)}") from None
    _write_identity(out, stem, key, [cert], force, ca_cert)
    _report(out / f"{stem}.pem", cert)


def _write_identity(out: Path, stem: str, key: ec.EllipticCurvePrivateKey,
                    certs: list[x509.Certificate],
                    force: bool, ca_cert: x509.Certificate | None = None) -> None:
    """``stem``.key (0600), ``stem``.pem and, for an issued identity, ca.pem."""
    out.mkdir(parents=True, exist_ok=True)
    targets = [out / f"{stem}.key", out / f"{stem}.pem"]
    if not force:
        for path in targets:
            if path.exists():
                raise BadInput(f"{path} exists; refusing to overwrite it (use --force)")
    try:
        write_key(targets[0], key, overwrite=force)
        write_cert(targets[1], certs, overwrite=force)
        if ca_cert is not None:
            write_cert(out / "ca.pem", ca_cert, overwrite=True)
    except PkiError as exc:
        raise BadInput(one_line(exc)) from None
    except OSError as exc:
        raise Failure(f"{out}: {exc.strerror or exc}") from None


def _report(path: Path, cert: x509.Certificate) -> None:
    click.echo(f"wrote {path}: {cert.subject.rfc4514_string()}, serial {cert.serial_number:x}, "
               f"valid until {cert.not_valid_after_utc:%Y-%m-%d}")


def _destination(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url.startswith(("mqtts://", "mqtt://")):
        raise BadInput(f"--destination: {text!r} is not NAME=mqtts://host:port")
    return name, url


def _gateway_toml(unit: str, gateway: str, dests: Sequence[tuple[str, str]]) -> str:
    lines = ["# Written by 'kemon provision gateway'. Add the buses and meters of the site",
             "# (docs/configuration.md), then check with 'kemon gateway check -c gateway.toml'.",
             "", "[gateway]", f"id = {json.dumps(gateway)}", f"unit = {json.dumps(unit)}",
             'data_dir = "/var/lib/kemon"']
    for name, url in dests:
        lines += ["", "[[destination]]", f"name = {json.dumps(name)}", f"url = {json.dumps(url)}",
                  'ca_file = "ca.pem"', 'cert_file = "gateway.pem"', 'key_file = "gateway.key"']
        if url.startswith("mqtt://"):
            lines.append("insecure = true")
    lines += ["", "# [[bus]]", '# name = "rs485-1"', '# kind = "modbus-rtu"',
              '# port = "/dev/rs485-1"', "", "# [[meter]]", '# name = "incomer"',
              '# bus = "rs485-1"', "# address = 1", '# profile = "sdm630"', ""]
    return "\n".join(lines)
