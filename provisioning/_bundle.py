"""What a gateway's first-boot bundle holds, and how it goes onto an SD-card image.

``check_bundle`` reads what ``kemon provision gateway --out DIR`` wrote and refuses it unless
the configuration loads, the key matches the certificate, the certificate chains to ``ca.pem``
and names the configured gateway. ``bundle_files`` lays out the ``kemon/`` folder of the boot
partition: the identity, ``gateway.toml`` with its file paths rewritten to where the device
keeps them (``/etc/kemon/tls/…``), ``firstboot.sh``, the gateway's systemd unit, the udev
rules, the site's firewall when given, the original ``cmdline.txt``, the hook text and
``SHA256SUMS``. ``put_bundle`` writes it into a FAT volume, puts the HATs' block into
``config.txt`` when asked, and appends the first-boot hook to ``cmdline.txt`` once, the way
Raspberry Pi Imager hooks its own first-run script.

Errors: ``BundleError`` (the bundle folder is incomplete or inconsistent), one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from ._hardware import HardwareError, with_kemon_block
from ._image import FatImage
from ._pki import PkiError, gateway_identity, load_cert, load_key, verify_issued

__all__ = ["BUNDLE_DIR", "Bundle", "BundleError", "Written", "bundle_files", "check_bundle",
           "hook_for", "put_bundle", "with_hook"]

log = logging.getLogger(__name__)

BUNDLE_DIR = "kemon"                        # the folder on the boot partition
STAGING_DIR = "kemon.new"                   # written first, then renamed to BUNDLE_DIR
IDENTITY = ("gateway.key", "gateway.pem", "ca.pem")
REQUIRED = ("gateway.toml", *IDENTITY)
TLS_DIR = "/etc/kemon/tls"                  # where firstboot.sh installs the identity
DATA_DIR = "/var/lib/kemon"                 # the only path kemon-gateway.service may write
UNIT_NAME = "kemon-gateway.service"
UDEV_FILE = "udev/99-kemon-rs485.rules"     # firstboot.sh installs udev/*.rules
FIREWALL_FILE = "nftables/kemon-gateway.nft"    # and this one, when the bundle has it
# systemd-run-generator(8): systemd.run= boots into kernel-command-line.service running the
# command; systemd.run_success_action=reboot reboots after it succeeds; systemd.unit= selects
# kernel-command-line.target as the boot target (what Raspberry Pi Imager appends for its
# firstrun.sh).
HOOK_TEMPLATE = ("systemd.run={boot}/kemon/firstboot.sh systemd.run_success_action=reboot "
                 "systemd.unit=kernel-command-line.target")
_ANY_HOOK = re.compile(re.escape(HOOK_TEMPLATE).replace(re.escape("{boot}"), r"\S*"))
_PATH_KEYS = ("ca_file", "cert_file", "key_file")
_PATH_LINE = re.compile(
    r"""^(?P<head>[ \t]*(?P<key>ca_file|cert_file|key_file)[ \t]*=[ \t]*)"""
    r"""(?P<value>"[^"\\]*"|'[^']*')(?P<tail>[ \t]*(\#.*)?)$""", re.MULTILINE)


class BundleError(Exception):
    """The bundle folder cannot go onto a device as it is."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A checked bundle: the files as they go into ``kemon/`` (before the cmdline files)."""

    source: Path
    unit: str
    gateway: str
    files: dict[str, bytes]


@dataclasses.dataclass(frozen=True)
class Written:
    """What ``put_bundle`` did."""

    files: dict[str, int]           # path on the boot partition -> size in bytes
    hook: str
    hook_added: bool                # False when cmdline.txt already carried it
    replaced: bool                  # an earlier bundle was replaced (--force)
    cmdline: str                    # the new cmdline.txt line
    config_txt: str                 # config.txt's Kemon block: appended, replaced, removed or
                                    # untouched


def check_bundle(directory: Path, gateway_unit: Path | None,
                 extra: Mapping[str, bytes] | None = None) -> Bundle:
    """Read and check the bundle in ``directory``; ``gateway_unit`` is the systemd unit file
    to carry (None: none), ``extra`` more files to carry as they are (``UDEV_FILE``,
    ``FIREWALL_FILE``)."""
    if not directory.is_dir():
        raise BundleError(f"{directory} is not a folder (make it with 'kemon provision "
                          "gateway --out DIR')")
    missing = [name for name in REQUIRED if not (directory / name).is_file()]
    if missing:
        raise BundleError(f"{directory} lacks {', '.join(missing)} (make it with 'kemon "
                          "provision gateway --out DIR')")
    from gateway import ConfigError, load_config

    config_path = directory / "gateway.toml"
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        raise BundleError(str(exc)) from None
    key_path, cert_path, ca_path = (directory / name for name in IDENTITY)
    try:
        key, cert, ca = load_key(key_path), load_cert(cert_path), load_cert(ca_path)
    except (PkiError, ValueError, IndexError, TypeError) as exc:
        raise BundleError(f"{directory}: unreadable identity: {exc}") from None
    if key.public_key() != cert.public_key():
        raise BundleError(f"{key_path} is not the key of {cert_path}")
    try:
        verify_issued(cert, ca)
        cert_unit, cert_gateway = gateway_identity(cert)
    except (PkiError, ValueError) as exc:
        raise BundleError(f"{cert_path}: {exc}") from None
    if (cert_unit, cert_gateway) != (cfg.gateway.unit, cfg.gateway.id):
        raise BundleError(f"{cert_path} is gateway {cert_unit}/{cert_gateway} but {config_path} "
                          f"configures {cfg.gateway.unit}/{cfg.gateway.id}")
    if cfg.gateway.data_dir != Path(DATA_DIR):
        raise BundleError(f"{config_path}: gateway.data_dir: is {cfg.gateway.data_dir}; the "
                          f"service may write only {DATA_DIR}: set data_dir = \"{DATA_DIR}\"")
    text = config_path.read_text(encoding="utf-8")
    _check_paths(config_path, tomllib.loads(text), directory.resolve())
    files = {
        "gateway.toml": device_config(text, config_path),
        **{name: (directory / name).read_bytes() for name in IDENTITY},
        "firstboot.sh": firstboot_script(),
    }
    if gateway_unit is not None:
        files[f"systemd/{UNIT_NAME}"] = gateway_unit.read_bytes()
    files.update(extra or {})
    return Bundle(source=directory, unit=cfg.gateway.unit, gateway=cfg.gateway.id, files=files)


def _check_paths(config_path: Path, doc: dict[str, Any], base: Path) -> None:
    """Every file the configuration names must be one of the bundle's own."""
    allowed = {"ca_file": "ca.pem", "cert_file": "gateway.pem", "key_file": "gateway.key"}
    for where, table in _path_tables(doc):
        for key in _PATH_KEYS:
            value = table.get(key)
            if value is not None and (base / value).resolve() != base / allowed[key]:
                raise BundleError(f"{config_path}: {where}.{key}: names {value}; the bundle "
                                  f"carries only {allowed[key]}: set {key} = \"{allowed[key]}\"")
    for i, meter in enumerate(doc.get("meter", [])):
        ref = meter.get("profile") if isinstance(meter, dict) else None
        if isinstance(ref, str) and (ref.endswith(".toml") or "/" in ref):
            raise BundleError(f"{config_path}: meter[{i}].profile: {ref} is a file the bundle "
                              "does not carry; use a shipped profile or inline points")


def _path_tables(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    tables: list[tuple[str, dict[str, Any]]] = []
    if isinstance(doc.get("gateway"), dict):
        tables.append(("gateway", doc["gateway"]))
    tables += [(f"destination[{i}]", d) for i, d in enumerate(doc.get("destination", []))
               if isinstance(d, dict)]
    return tables


def device_config(text: str, config_path: Path) -> bytes:
    """``gateway.toml`` with ``ca_file``/``cert_file``/``key_file`` pointing into
    ``/etc/kemon/tls``; every other byte kept. Checked by parsing both versions."""

    def absolute(match: re.Match[str]) -> str:
        name = Path(match["value"][1:-1]).name
        return f"{match['head']}{json.dumps(f'{TLS_DIR}/{name}')}{match['tail']}"

    new = _PATH_LINE.sub(absolute, text)
    before, after = tomllib.loads(text), tomllib.loads(new)
    for _, table in _path_tables(before):
        for key in _PATH_KEYS:
            if key in table:
                table[key] = f"{TLS_DIR}/{Path(table[key]).name}"
    if before != after:
        raise BundleError(f"{config_path}: cannot rewrite its ca_file/cert_file/key_file for the "
                          "device; write each on its own line as key = \"file\"")
    return new.encode("utf-8")


def firstboot_script() -> bytes:
    """The first-boot script shipped in this package (``provisioning/data/firstboot.sh``)."""
    return resources.files("provisioning").joinpath("data/firstboot.sh").read_bytes()


def hook_for(boot_path: str) -> str:
    """The tokens appended to ``cmdline.txt`` for a boot partition mounted at ``boot_path``."""
    return HOOK_TEMPLATE.format(boot=boot_path.rstrip("/"))


def with_hook(cmdline: str, hook: str) -> tuple[str, bool]:
    """``cmdline.txt`` (one line, the kernel reads only the first) with ``hook`` appended once;
    and whether it was appended. The result ends with one newline."""
    lines = cmdline.splitlines()
    first = lines[0].strip() if lines else ""
    if f" {hook} " in f" {first} ":
        return first + "\n", False
    first = " ".join(_ANY_HOOK.sub("", first).split())     # one for another boot path
    return (f"{first} {hook}" if first else hook) + "\n", True


def bundle_files(bundle: Bundle, original_cmdline: bytes, hook: str) -> dict[str, bytes]:
    """Everything that goes into ``kemon/``, with ``SHA256SUMS`` (sha256sum's format) over it."""
    files = {**bundle.files, "cmdline.txt.orig": original_cmdline,
             "cmdline.hook": hook.encode("ascii") + b"\n"}
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n"
                   for name, data in sorted(files.items()))
    return {**files, "SHA256SUMS": sums.encode("ascii")}


def put_bundle(fat: FatImage, bundle: Bundle, boot_path: str, force: bool,
               config_block: str | None = None) -> Written:
    """Write ``bundle`` into ``kemon/`` of ``fat`` and hook the first boot in ``cmdline.txt``;
    with ``config_block`` (``_hardware.kemon_block``) put it into ``config.txt`` in place of
    an earlier one ("": only remove that).

    Refuses (``BundleError``) an image that already carries a bundle unless ``force``, one
    without ``cmdline.txt``, and, given a block, one without ``config.txt``, before writing
    anything. Order: the new folder is written under ``kemon.new``, then renamed into place,
    then ``config.txt`` gets the block, then ``cmdline.txt`` the hook; an interruption leaves
    either the old state or a complete bundle, which a run with ``--force`` completes.
    """
    if not fat.exists("cmdline.txt"):
        raise BundleError("its boot partition has no cmdline.txt: not a Raspberry Pi OS image")
    config_old, config_new, config_txt = _config_change(fat, config_block)
    replaced = fat.exists(BUNDLE_DIR)
    if replaced and not force:
        raise BundleError(f"it already carries a Kemon bundle ({BUNDLE_DIR}/); use --force to "
                          "replace it")
    hook = hook_for(boot_path)
    current = fat.read("cmdline.txt")
    original = current
    if replaced and fat.exists(f"{BUNDLE_DIR}/cmdline.txt.orig"):
        original = fat.read(f"{BUNDLE_DIR}/cmdline.txt.orig")    # keep the first original
    files = bundle_files(bundle, original, hook)
    if fat.exists(STAGING_DIR):
        fat.remove_tree(STAGING_DIR)                            # left by an interrupted run
    fat.write_tree(STAGING_DIR, files)
    if replaced:
        fat.remove_tree(BUNDLE_DIR)
    fat.rename(STAGING_DIR, BUNDLE_DIR)
    if config_new != config_old:
        fat.write("config.txt", config_new)
    line, added = with_hook(current.decode("utf-8", "replace"), hook)
    if added:
        fat.write("cmdline.txt", line.encode("utf-8"))
    log.info("wrote the bundle of %s/%s into %s", bundle.unit, bundle.gateway, fat.image)
    sizes = {f"{BUNDLE_DIR}/{name}": len(data) for name, data in sorted(files.items())}
    return Written(files=sizes, hook=hook, hook_added=added, replaced=replaced,
                   cmdline=line.rstrip("\n"), config_txt=config_txt)


def _config_change(fat: FatImage, block: str | None) -> tuple[bytes, bytes, str]:
    """``config.txt`` as it is and as it will be with ``block`` (see ``put_bundle``), and
    what happens to its Kemon block: appended, replaced, removed or untouched."""
    if block is None:
        return b"", b"", "untouched"
    if not fat.exists("config.txt"):
        raise BundleError("its boot partition has no config.txt: not a Raspberry Pi OS image")
    old = fat.read("config.txt")
    text = old.decode("utf-8", "surrogateescape")      # kept byte for byte, whatever it holds
    try:
        had_block = with_kemon_block(text, "") != text
        new = with_kemon_block(text, block).encode("utf-8", "surrogateescape")
    except HardwareError as exc:
        raise BundleError(str(exc)) from None
    if block:
        return old, new, "replaced" if had_block else "appended"
    return old, new, "removed" if had_block else "untouched"
