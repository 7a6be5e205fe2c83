"""`kemon provision image` and the device's first boot, on real FAT images.

Each image is built here: an MBR written byte by byte (no sfdisk on the test machines), a FAT32
file system made by ``mkfs.vfat --offset`` inside the first partition, ``cmdline.txt`` and
``config.txt`` put in with mtools. After the command runs, the image is read back by
``FatReader`` below, a small read-only FAT32 reader written for this test from Microsoft's
fatgen103 (not mtools, which wrote it; 7z is not installed here and pyfatfs pulls in the
unmaintained PyFilesystem2), and checked with ``fsck.fat -n``. Then ``firstboot.sh`` runs as
root against the extracted boot folder and a temporary root (KEMON_ROOT): real ``useradd
--prefix``, real ``systemctl --root``, real chown/chmod. Firewall files are judged by the real
``nft -c``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from provisioning import generate_key
from provisioning._bundle import hook_for, with_hook
from provisioning._hardware import BLOCK_END, HardwareError, Hat, kemon_block, with_kemon_block

from .conftest import ROOT, UNIT, run_kemon

SECTOR = 512
PART_LBA = 2048                         # 1 MiB, where partitioning tools align a first partition
PART_SECTORS = 40 * 2048                # 40 MiB: FAT32 needs >= 65525 clusters (fatgen103 §3.5)
CMDLINE = b"console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 " \
          b"fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n"
CONFIG = b"# config.txt\narm_64bit=1\ndtparam=uart0=on\n"
HOOK = hook_for("/boot/firmware")
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": os.devnull}
BUNDLE_FILES = {"gateway.toml", "gateway.pem", "gateway.key", "ca.pem", "firstboot.sh",
                "systemd/kemon-gateway.service", "udev/99-kemon-rs485.rules",
                "cmdline.txt.orig", "cmdline.hook", "SHA256SUMS"}
RULES = ROOT / "hardware" / "udev" / "99-kemon-rs485.rules"
NFT = ROOT / "hardware" / "nftables" / "kemon-gateway.nft"
SNIPPETS = ROOT / "hardware" / "rs485" / "config.txt.d"


# --- an independent FAT32 reader ---------------------------------------------------------------

def u16(b: bytes, at: int) -> int:
    return int.from_bytes(b[at:at + 2], "little")


def u32(b: bytes, at: int) -> int:
    return int.from_bytes(b[at:at + 4], "little")


class FatReader:
    """Read-only FAT32 (fatgen103 §3 BPB, §4 FAT, §6 directory entries, §7 long names)."""

    def __init__(self, volume: bytes) -> None:
        self.v = volume
        self.bps, self.spc = u16(volume, 11), volume[13]
        reserved, fats, fat_size = u16(volume, 14), volume[16], u32(volume, 36)
        assert u16(volume, 22) == 0, "not FAT32 (BPB_FATSz16 must be 0)"
        self.fat = volume[reserved * self.bps:(reserved + fat_size) * self.bps]
        self.data = (reserved + fats * fat_size) * self.bps
        self.root = u32(volume, 44)

    def chain(self, cluster: int, size: int | None = None) -> bytes:
        out = bytearray()
        while 2 <= cluster < 0x0FFFFFF8:       # end-of-chain marks are >= 0x0FFFFFF8
            at = self.data + (cluster - 2) * self.spc * self.bps
            out += self.v[at:at + self.spc * self.bps]
            cluster = u32(self.fat, cluster * 4) & 0x0FFFFFFF
        return bytes(out if size is None else out[:size])

    def entries(self, cluster: int) -> dict[str, tuple[bool, int, int]]:
        """name -> (is_dir, first cluster, size) in the directory at ``cluster``."""
        found: dict[str, tuple[bool, int, int]] = {}
        raw, long_parts = self.chain(cluster), []
        for at in range(0, len(raw), 32):
            e = raw[at:at + 32]
            if e[0] == 0x00:
                break
            if e[0] == 0xE5:
                long_parts = []
                continue
            attr = e[11]
            if attr == 0x0F:                    # long-name entry: 13 UTF-16 units in 3 pieces
                long_parts.insert(0, e[1:11] + e[14:26] + e[28:32])
                continue
            if attr & 0x08:                     # volume label
                long_parts = []
                continue
            if long_parts:
                name = b"".join(long_parts).decode("utf-16-le").split("\x00")[0]
            else:
                base, ext = e[0:8].decode("ascii").rstrip(), e[8:11].decode("ascii").rstrip()
                base = base.lower() if e[12] & 0x08 else base     # NT case bits
                ext = ext.lower() if e[12] & 0x10 else ext
                name = f"{base}.{ext}" if ext else base
            long_parts = []
            if name in (".", ".."):
                continue
            found[name] = (bool(attr & 0x10), (u16(e, 20) << 16) | u16(e, 26), u32(e, 28))
        return found

    def walk(self, cluster: int | None = None, prefix: str = "") -> Iterator[tuple[str, bytes]]:
        for name, (is_dir, first, size) in self.entries(cluster or self.root).items():
            if is_dir:
                yield from self.walk(first, f"{prefix}{name}/")
            else:
                yield f"{prefix}{name}", self.chain(first, size)

    def files(self) -> dict[str, bytes]:
        return dict(self.walk())


def volume_of(image: Path, offset: int = PART_LBA * SECTOR,
              size: int = PART_SECTORS * SECTOR) -> bytes:
    with image.open("rb") as f:
        f.seek(offset)
        return f.read(size)


def fsck_clean(image: Path, tmp: Path, offset: int = PART_LBA * SECTOR) -> None:
    """``fsck.fat -n`` (check only) on the partition, copied out: it has no offset option."""
    part = tmp / "partition.fat"
    part.write_bytes(volume_of(image, offset))
    res = subprocess.run(["fsck.fat", "-n", str(part)], capture_output=True, text=True,
                         check=False, timeout=60)
    part.unlink()
    assert res.returncode == 0, res.stdout + res.stderr


# --- building images ---------------------------------------------------------------------------

def mbr(*partitions: tuple[int, int, int]) -> bytes:
    """An MBR with (type, first LBA, sectors) records (UEFI 2.10 §5.2.1 layout)."""
    sector = bytearray(SECTOR)
    sector[440:444] = bytes.fromhex("4e639091")             # disk signature, as PARTUUID shows
    for i, (type_code, lba, count) in enumerate(partitions):
        at = 446 + 16 * i
        sector[at + 4] = type_code
        sector[at + 8:at + 12] = lba.to_bytes(4, "little")
        sector[at + 12:at + 16] = count.to_bytes(4, "little")
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def mtools(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True, env=MTOOLS_ENV, timeout=60)


def put(image: Path, name: str, data: bytes, offset: int, tmp: Path) -> None:
    src = tmp / "put.tmp"
    src.write_bytes(data)
    mtools("mcopy", "-i", f"{image}@@{offset}", str(src), f"::/{name}")
    src.unlink()


def make_pi_image(path: Path, tmp: Path, *, fat_type: int = 0x0C, format_fat: bool = True) -> Path:
    """A small Raspberry Pi OS-shaped disk: MBR, FAT32 boot partition, a (blank) root."""
    root_lba = PART_LBA + PART_SECTORS
    with path.open("wb") as f:
        f.truncate((root_lba + 2048) * SECTOR)
        f.write(mbr((fat_type, PART_LBA, PART_SECTORS), (0x83, root_lba, 2048)))
    if format_fat:
        subprocess.run(["mkfs.vfat", "-F", "32", "-S", "512", "-s", "1", "-n", "bootfs",
                        "--offset", str(PART_LBA), str(path), str(PART_SECTORS // 2)],
                       check=True, capture_output=True, timeout=60)
        for name, data in (("cmdline.txt", CMDLINE), ("config.txt", CONFIG)):
            put(path, name, data, PART_LBA * SECTOR, tmp)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for tool in ("mkfs.vfat", "fsck.fat", "mcopy"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is required (make test installs dosfstools and mtools)")
    tmp = tmp_path_factory.mktemp("template")
    return make_pi_image(tmp / "pi.img", tmp)


@pytest.fixture(scope="module")
def bundle_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bundle")
    for args in (("ca", "init", "--dir", str(tmp / "ca"), "--name", "Kemon Test CA"),
                 ("gateway", "--ca-dir", str(tmp / "ca"), "--unit", UNIT, "--id", "GW0001",
                  "--destination", "province=mqtts://broker.example:8883",
                  "--out", str(tmp / "gw"))):
        res = run_kemon("provision", *args)
        assert res.returncode == 0, res.stderr
    return tmp / "gw"


@pytest.fixture
def image(template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "pi.img"
    shutil.copyfile(template, copy)
    return copy


@pytest.fixture
def bundle(bundle_template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "gw"
    shutil.copytree(bundle_template, copy)
    return copy


def provision(image: Path, bundle: Path, *extra: str) -> str:
    res = run_kemon("provision", "image", "--image", str(image), "--bundle", str(bundle), *extra)
    assert res.returncode == 0, res.stderr
    assert "PRIVATE KEY" not in res.stdout + res.stderr
    return res.stdout


def refused(image: Path, bundle: Path, *extra: str) -> str:
    before = sha(image) if image.is_file() else None
    res = run_kemon("provision", "image", "--image", str(image), "--bundle", str(bundle), *extra)
    assert res.returncode == 2, (res.stdout, res.stderr)
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in res.stderr
    if before is not None:
        assert sha(image) == before, "a refused image was changed"
    return line


# --- the image command -------------------------------------------------------------------------

def test_the_bundle_lands_in_the_boot_partition(image: Path, bundle: Path,
                                                tmp_path: Path) -> None:
    out = provision(image, bundle)
    assert f"at byte offset {PART_LBA * SECTOR} (sector {PART_LBA})" in out
    assert "MBR partition 1 (type 0x0c FAT32 LBA), FAT32" in out
    assert f"wrote kemon/gateway.key ({len((bundle / 'gateway.key').read_bytes())} bytes)" in out

    fsck_clean(image, tmp_path)
    files = FatReader(volume_of(image)).files()
    assert {n.removeprefix("kemon/") for n in files if n.startswith("kemon/")} == BUNDLE_FILES
    assert files["config.txt"] == CONFIG
    assert files["cmdline.txt"] == CMDLINE.rstrip(b"\n") + b" " + HOOK.encode() + b"\n"
    assert files["cmdline.txt"].count(b"\n") == 1                      # one line
    assert files["kemon/cmdline.txt.orig"] == CMDLINE
    for name in ("gateway.key", "gateway.pem", "ca.pem"):
        assert files[f"kemon/{name}"] == (bundle / name).read_bytes()
    assert files["kemon/systemd/kemon-gateway.service"] == \
        (ROOT / "systemd" / "kemon-gateway.service").read_bytes()
    assert files["kemon/firstboot.sh"] == \
        (ROOT / "provisioning" / "data" / "firstboot.sh").read_bytes()
    assert files["kemon/udev/99-kemon-rs485.rules"] == RULES.read_bytes()
    toml = files["kemon/gateway.toml"].decode()
    assert 'key_file = "/etc/kemon/tls/gateway.key"' in toml
    assert 'ca_file = "/etc/kemon/tls/ca.pem"' in toml
    assert toml.replace("/etc/kemon/tls/", "") == (bundle / "gateway.toml").read_text()
    sums = dict(reversed(line.split("  ")) for line in
                files["kemon/SHA256SUMS"].decode().splitlines())
    assert set(sums) == BUNDLE_FILES - {"SHA256SUMS"}
    assert all(hashlib.sha256(files[f"kemon/{n}"]).hexdigest() == h for n, h in sums.items())


def test_a_second_run_needs_force_and_never_hooks_twice(image: Path, bundle: Path,
                                                        tmp_path: Path) -> None:
    provision(image, bundle)
    assert "already carries a Kemon bundle" in refused(image, bundle)
    (bundle / "gateway.toml").write_text((bundle / "gateway.toml").read_text() +
                                         "\n# site notes\n")
    out = provision(image, bundle, "--force")
    assert "replaced the earlier bundle" in out and "already has" in out
    fsck_clean(image, tmp_path)
    files = FatReader(volume_of(image)).files()
    assert files["cmdline.txt"].count(b"systemd.run=") == 1
    assert files["kemon/cmdline.txt.orig"] == CMDLINE                # still the true original
    assert files["kemon/gateway.toml"].endswith(b"# site notes\n")
    assert not any(n.startswith("kemon.new") for n in files)


def test_a_bare_fat_image_and_the_older_boot_path(tmp_path: Path, bundle: Path) -> None:
    bare = tmp_path / "boot.fat"
    subprocess.run(["mkfs.vfat", "-F", "32", "-S", "512", "-s", "1", "-C", str(bare),
                    str(PART_SECTORS // 2)], check=True, capture_output=True, timeout=60)
    put(bare, "cmdline.txt", CMDLINE, 0, tmp_path)
    out = provision(bare, bundle, "--boot-path", "/boot")
    assert "a bare FAT file system (no partition table), FAT32, at byte offset 0" in out
    fsck_clean(bare, tmp_path, offset=0)
    files = FatReader(bare.read_bytes()).files()
    assert files["cmdline.txt"].endswith(b" systemd.run=/boot/kemon/firstboot.sh "
                                         b"systemd.run_success_action=reboot "
                                         b"systemd.unit=kernel-command-line.target\n")


def test_bad_images_are_refused_unchanged(tmp_path: Path, bundle: Path, template: Path) -> None:
    assert "not found" in refused(tmp_path / "missing.img", bundle)
    text = tmp_path / "notes.img"
    text.write_text("not an image\n" * 100)
    assert "not a disk image" in refused(text, bundle)
    linux_only = tmp_path / "linux.img"
    with linux_only.open("wb") as f:
        f.truncate(4 * 2**20)
        f.write(mbr((0x83, 2048, 4096)))
    assert "no FAT partition in its MBR (partition types: 0x83)" in refused(linux_only, bundle)
    gpt = tmp_path / "gpt.img"
    with gpt.open("wb") as f:
        f.truncate(4 * 2**20)
        f.write(mbr((0xEE, 1, 8191)))
    assert "GPT" in refused(gpt, bundle)
    blank = make_pi_image(tmp_path / "blank.img", tmp_path, format_fat=False)
    assert "partition 1 (type 0x0c) holds no FAT file system" in refused(blank, bundle)
    xz = tmp_path / "raspios.img.xz"
    xz.write_bytes(b"\xfd7zXZ\x00" + bytes(1000))
    assert "xz-compressed" in refused(xz, bundle)
    no_cmdline = tmp_path / "nocmd.img"
    shutil.copyfile(template, no_cmdline)
    mtools("mdel", "-i", f"{no_cmdline}@@{PART_LBA * SECTOR}", "::/cmdline.txt")
    assert "no cmdline.txt" in refused(no_cmdline, bundle)


def test_bad_bundles_are_refused_and_the_image_is_unchanged(image: Path, bundle: Path) -> None:
    other = generate_key().private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
    key = bundle / "gateway.key"
    original = key.read_bytes()
    key.write_bytes(other)
    assert f"{key} is not the key of {bundle / 'gateway.pem'}" in refused(image, bundle)
    key.unlink()
    assert "lacks gateway.key" in refused(image, bundle)
    key.write_bytes(original)
    (bundle / "ca.pem").write_bytes((bundle / "gateway.pem").read_bytes())   # wrong CA
    assert "is not issued by" in refused(image, bundle)
    assert "is not a folder" in refused(image, bundle / "nothing")


def test_a_bundle_whose_config_points_elsewhere_is_refused(image: Path, bundle: Path) -> None:
    config = bundle / "gateway.toml"
    text = config.read_text()
    config.write_text(text.replace('data_dir = "/var/lib/kemon"', 'data_dir = "/srv/kemon"'))
    assert "may write only /var/lib/kemon" in refused(image, bundle)
    shutil.copyfile(bundle / "ca.pem", bundle / "other-ca.pem")
    config.write_text(text.replace('ca_file = "ca.pem"', 'ca_file = "other-ca.pem"'))
    assert "carries only ca.pem" in refused(image, bundle)
    config.write_text(text.replace('unit = "', 'unit = "X'))
    assert "gateway.toml" in refused(image, bundle)


def test_the_hook_is_appended_once_on_one_line() -> None:
    line, added = with_hook("console=tty1 rootwait\n", HOOK)
    assert added and line == f"console=tty1 rootwait {HOOK}\n"
    assert with_hook(line, HOOK) == (line, False)
    moved, added = with_hook(line, hook_for("/boot"))
    assert added and moved == f"console=tty1 rootwait {hook_for('/boot')}\n"
    imager = "rootwait systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot " \
             "systemd.unit=kernel-command-line.target"
    both, _ = with_hook(imager, HOOK)
    assert both == f"{imager} {HOOK}\n"        # Imager's customisation runs first, then ours


# --- the first boot ----------------------------------------------------------------------------

def target_root(path: Path, *, kemon_installed: bool = True) -> Path:
    """A minimal Raspberry Pi OS root: the user databases (dialout exists, kemon does not)."""
    (path / "etc" / "systemd" / "system").mkdir(parents=True)
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n"
                                         "pi:x:1000:1000:,,,:/home/pi:/bin/bash\n")
    (path / "etc" / "group").write_text("root:x:0:\ndialout:x:20:pi\npi:x:1000:\n")
    (path / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\npi:*:19000:0:99999:7:::\n")
    (path / "etc" / "gshadow").write_text("root:*::\ndialout:*::pi\npi:!::\n")
    for name in ("shadow", "gshadow"):
        (path / "etc" / name).chmod(0o640)
    if kemon_installed:
        kemon = path / "usr" / "local" / "bin" / "kemon"
        kemon.parent.mkdir(parents=True)
        kemon.write_text("#!/bin/sh\nexit 0\n")
        kemon.chmod(0o755)
    return path


def boot_folder(image: Path, path: Path) -> Path:
    """The boot partition as the device mounts it, extracted by the independent reader."""
    for name, data in FatReader(volume_of(image)).files().items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def firstboot(boot: Path, root: Path) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.fail("the first-boot test runs as root (it creates users and chowns files)")
    env = {"PATH": os.environ["PATH"], "KEMON_ROOT": str(root), "KEMON_BOOT": str(boot)}
    script = ROOT / "provisioning" / "data" / "firstboot.sh"
    if (boot / "kemon" / "firstboot.sh").exists():
        script = boot / "kemon" / "firstboot.sh"            # what the device runs
    return subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env,
                          check=False, timeout=60)


def account(root: Path, db: str, name: str) -> list[str]:
    for line in (root / "etc" / db).read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    raise AssertionError(f"no {name} in {db}")


def snapshot(top: Path) -> dict[str, tuple[int, int, int, str]]:
    out = {}
    for p in sorted(top.rglob("*")):
        st = p.lstat()
        body = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() \
            else os.readlink(p) if p.is_symlink() else ""
        out[str(p.relative_to(top))] = (st.st_mode, st.st_uid, st.st_gid, body)
    return out


def owner_mode(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_first_boot_installs_and_cleans_up(image: Path, bundle: Path, tmp_path: Path) -> None:
    provision(image, bundle)
    boot = boot_folder(image, tmp_path / "boot")
    root = target_root(tmp_path / "root")
    res = firstboot(boot, root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "created system user kemon" in res.stdout
    assert "enabled kemon-gateway.service" in res.stdout

    user, group = account(root, "passwd", "kemon"), account(root, "group", "kemon")
    uid, gid = int(user[2]), int(group[2])
    assert uid < 1000 and user[5] == "/var/lib/kemon" and user[6] == "/usr/sbin/nologin"
    assert "kemon" in account(root, "group", "dialout")[3].split(",")
    assert account(root, "group", "dialout")[3].split(",")[0] == "pi"     # others kept

    etc = root / "etc" / "kemon"
    assert owner_mode(etc / "gateway.toml") == (0, gid, 0o640)
    assert owner_mode(etc / "tls" / "gateway.key") == (0, gid, 0o640)
    assert owner_mode(etc / "tls" / "gateway.pem") == (0, 0, 0o644)
    assert owner_mode(etc / "tls" / "ca.pem") == (0, 0, 0o644)
    assert owner_mode(root / "var" / "lib" / "kemon") == (uid, gid, 0o750)
    for name in ("gateway.key", "gateway.pem", "ca.pem"):
        assert (etc / "tls" / name).read_bytes() == (bundle / name).read_bytes()
    assert 'cert_file = "/etc/kemon/tls/gateway.pem"' in (etc / "gateway.toml").read_text()
    unit = root / "etc" / "systemd" / "system" / "kemon-gateway.service"
    assert owner_mode(unit) == (0, 0, 0o644)
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants"
    assert os.readlink(wants / "kemon-gateway.service") == "/etc/systemd/system/" \
                                                           "kemon-gateway.service"
    rules = root / "etc" / "udev" / "rules.d" / "99-kemon-rs485.rules"
    assert owner_mode(rules) == (0, 0, 0o644) and rules.read_bytes() == RULES.read_bytes()
    assert "installed /etc/udev/rules.d/99-kemon-rs485.rules" in res.stdout
    assert "udev re-read" not in res.stdout and "udevadm" not in res.stdout  # not on a root
    assert not (root / "etc" / "nftables.d").exists()        # no --firewall, no firewall
    assert not (root / "etc" / "nftables.conf").exists()

    assert sorted(p.name for p in boot.iterdir()) == ["cmdline.txt", "config.txt"]  # no secrets
    assert (boot / "cmdline.txt").read_bytes() == CMDLINE                # byte for byte
    assert not list(root.rglob("*.kemon-new"))
    assert "removed the private key" in (root / "var" / "log" / "kemon-firstboot.log").read_text()

    before = snapshot(root), snapshot(boot)
    again = firstboot(boot, root)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert (snapshot(root), snapshot(boot)) == before                  # a no-op


def test_an_interrupted_first_boot_finishes_next_time(image: Path, bundle: Path,
                                                      tmp_path: Path) -> None:
    provision(image, bundle)
    boot = boot_folder(image, tmp_path / "boot")
    root = target_root(tmp_path / "root", kemon_installed=False)
    assert firstboot(boot, root).returncode == 0
    installed = snapshot(root)
    # as if power failed just after the key left the boot partition on a first run
    boot = boot_folder(image, tmp_path / "boot2")
    (boot / "kemon" / "gateway.key").unlink()
    res = firstboot(boot, root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "not enabled" in res.stdout                    # no /usr/local/bin/kemon in this root
    log = "var/log/kemon-firstboot.log"
    assert {k: v for k, v in snapshot(root).items() if k != log} == \
        {k: v for k, v in installed.items() if k != log}
    assert sorted(p.name for p in boot.iterdir()) == ["cmdline.txt", "config.txt"]
    assert (boot / "cmdline.txt").read_bytes() == CMDLINE


def test_a_damaged_bundle_installs_nothing_and_boots_normally_next(image: Path, bundle: Path,
                                                                   tmp_path: Path) -> None:
    provision(image, bundle)
    boot = boot_folder(image, tmp_path / "boot")
    root = target_root(tmp_path / "root")
    pem = boot / "kemon" / "gateway.pem"
    pem.write_bytes(pem.read_bytes().replace(b"A", b"B", 1))
    res = firstboot(boot, root)
    assert res.returncode == 1
    assert "does not match its SHA256SUMS" in res.stdout
    assert not (root / "etc" / "kemon").exists()
    assert (boot / "kemon" / "gateway.key").is_file()              # kept for a look
    assert (boot / "cmdline.txt").read_bytes() == CMDLINE           # the hook is gone


# --- the HAT's config.txt lines ----------------------------------------------------------------

def snippet_lines(name: str) -> list[str]:
    return [line for line in (SNIPPETS / f"{name}.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def kemon_blocks(config: bytes) -> list[str]:
    return re.findall(r"^# --- kemon: .*?^# --- end kemon ---\n", config.decode(),
                      re.MULTILINE | re.DOTALL)


def test_hat_lines_go_into_config_txt_once(image: Path, bundle: Path, tmp_path: Path) -> None:
    out = provision(image, bundle, "--hat", "sc16is752-spi1", "--hat", "usb-adapters")
    assert "nothing to add for usb-adapters" in out
    assert "  dtoverlay=sc16is752-spi1,int_pin=24\n" in out            # says what it appended
    fsck_clean(image, tmp_path)
    config = FatReader(volume_of(image)).files()["config.txt"]
    assert config.startswith(CONFIG)                                   # kept byte for byte
    [block] = kemon_blocks(config)
    assert config == CONFIG + block.encode()
    lines = block.splitlines()
    assert lines[0] == "# --- kemon: sc16is752-spi1 (kemon provision image --hat) ---"
    assert lines[-1] == BLOCK_END
    directives = [line for line in lines if not line.startswith("#")]
    assert directives[0] == "[all]"                    # no earlier [pi4] section captures it
    assert directives[1:] == [line for line in snippet_lines("sc16is752-spi1")
                              if line != "[all]"]
    assert "usb-adapters" not in block

    out = provision(image, bundle, "--force", "--hat", "uart-gpio14-15")
    assert "replaced the earlier Kemon block" in out
    assert "console=serial0,115200" in run_kemon(          # the template's cmdline has it
        "provision", "image", "--image", str(image), "--bundle", str(bundle), "--force",
        "--hat", "uart-gpio14-15").stderr
    config = FatReader(volume_of(image)).files()["config.txt"]
    [block] = kemon_blocks(config)
    assert config == CONFIG + block.encode()
    assert "enable_uart=1\ndtoverlay=disable-bt\n" in block and "sc16is752" not in block

    provision(image, bundle, "--force")                            # no --hat: left alone
    assert FatReader(volume_of(image)).files()["config.txt"] == config
    out = provision(image, bundle, "--force", "--hat", "usb-adapters")
    assert "removed the earlier Kemon block" in out
    fsck_clean(image, tmp_path)
    assert FatReader(volume_of(image)).files()["config.txt"] == CONFIG


def test_a_comment_only_snippet_adds_nothing(image: Path, bundle: Path) -> None:
    assert snippet_lines("usb-adapters") == []
    out = provision(image, bundle, "--hat", "usb-adapters")
    assert "nothing to add for usb-adapters" in out and "config.txt:" not in out
    assert FatReader(volume_of(image)).files()["config.txt"] == CONFIG


def test_an_unknown_hat_is_refused_and_the_image_unchanged(image: Path, bundle: Path) -> None:
    line = refused(image, bundle, "--hat", "sc16is752-spi1", "--hat", "waveshare")
    assert "--hat: no HAT snippet named 'waveshare'" in line
    for path in SNIPPETS.glob("*.txt"):
        assert path.stem in line                                   # the names there are
    help_text = run_kemon("provision", "image", "--help").stdout
    assert all(path.stem in " ".join(help_text.split()) for path in SNIPPETS.glob("*.txt"))


def test_a_cut_kemon_block_in_config_txt_is_refused(image: Path, bundle: Path,
                                                    tmp_path: Path) -> None:
    mtools("mdel", "-i", f"{image}@@{PART_LBA * SECTOR}", "::/config.txt")
    put(image, "config.txt", CONFIG + b"# --- kemon: x (kemon provision image --hat) ---\n"
        b"[all]\ndtoverlay=x\n", PART_LBA * SECTOR, tmp_path)
    assert "no '# --- end kemon ---' after it" in refused(image, bundle, "--hat",
                                                          "sc16is752-spi1")


def test_the_block_resets_conditional_sections() -> None:
    pi4 = Hat("pi4-only", ("[pi4]", "dtoverlay=uart3"))
    block = kemon_block([pi4, Hat("spi", ("[all]", "dtoverlay=sc16is752-spi1"))])
    assert block.splitlines()[1:-1] == [
        "# pi4-only (hardware/rs485/config.txt.d/pi4-only.txt)", "[all]", "[pi4]",
        "dtoverlay=uart3", "# spi (hardware/rs485/config.txt.d/spi.txt)", "[all]",
        "dtoverlay=sc16is752-spi1"]
    assert kemon_block([pi4]).splitlines()[-2] == "[all]"        # ends outside [pi4]
    assert kemon_block([Hat("usb", ())]) == ""
    config = "arm_64bit=1\n[pi5]\nusb_max_current_enable=1"           # no final newline
    once = with_kemon_block(config, block)
    assert once == config + "\n" + block
    assert with_kemon_block(once, block) == once                      # replaced, not added
    assert with_kemon_block(once, "") == config + "\n"
    with pytest.raises(HardwareError, match="more than one"):
        with_kemon_block(once + block, block)


# --- the site's firewall -----------------------------------------------------------------------

def site_ruleset(tmp_path: Path) -> Path:
    """The shipped ruleset as a technician adapts it: other interfaces, another meter subnet."""
    if shutil.which("nft") is None:
        pytest.fail("nft is required (apt-get install nftables)")
    text = NFT.read_text().replace('"eth1"', '"enp1s0"').replace("192.168.10.0/24",
                                                                  "172.16.5.0/24")
    assert text != NFT.read_text()
    path = tmp_path / "site.nft"
    path.write_text(text)
    return path


NFTABLES_UNIT = """[Unit]
Description=nftables (a stand-in for Debian's unit)

[Service]
Type=oneshot
ExecStart=/usr/sbin/nft -f /etc/nftables.conf

[Install]
WantedBy=sysinit.target
"""
INCLUDE = 'include "/etc/nftables.d/kemon-gateway.nft"'


def test_a_firewall_is_bundled_and_installed_once(image: Path, bundle: Path,
                                                  tmp_path: Path) -> None:
    site = site_ruleset(tmp_path)
    out = provision(image, bundle, "--firewall", str(site))
    assert f"{site}: checked with nft -c: accepted" in out
    assert "its firewall into /etc/nftables.d" in out
    files = FatReader(volume_of(image)).files()
    assert files["kemon/nftables/kemon-gateway.nft"] == site.read_bytes()
    assert f"{hashlib.sha256(site.read_bytes()).hexdigest()}  nftables/kemon-gateway.nft" \
        in files["kemon/SHA256SUMS"].decode()

    root = target_root(tmp_path / "root")
    unit = root / "usr" / "lib" / "systemd" / "system" / "nftables.service"
    unit.parent.mkdir(parents=True)
    unit.write_text(NFTABLES_UNIT)
    conf = root / "etc" / "nftables.conf"
    debian = "#!/usr/sbin/nft -f\n\nflush ruleset\n\ntable inet filter {\n}"   # no final \n
    conf.write_text(debian)
    conf.chmod(0o755)
    for run in ("boot", "again"):            # the second as if the first was cut short
        res = firstboot(boot_folder(image, tmp_path / run), root)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "enabled nftables.service" in res.stdout
    installed = root / "etc" / "nftables.d" / "kemon-gateway.nft"
    assert owner_mode(installed) == (0, 0, 0o644) and installed.read_bytes() == site.read_bytes()
    assert owner_mode(root / "etc" / "nftables.d") == (0, 0, 0o755)
    assert conf.read_text() == f"{debian}\n{INCLUDE}\n"                    # once, on its own line
    assert owner_mode(conf) == (0, 0, 0o755)
    wants = root / "etc" / "systemd" / "system" / "sysinit.target.wants" / "nftables.service"
    assert os.readlink(wants) == "/usr/lib/systemd/system/nftables.service"
    assert "loaded" not in res.stdout                  # nothing is loaded into a KEMON_ROOT


def test_without_nftables_on_the_device_the_first_boot_still_succeeds(
        image: Path, bundle: Path, tmp_path: Path) -> None:
    provision(image, bundle, "--firewall", str(site_ruleset(tmp_path)))
    root = target_root(tmp_path / "root")                     # no nftables.service, no conf
    res = firstboot(boot_folder(image, tmp_path / "boot"), root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "could not enable nftables.service" in res.stdout
    assert "enabled kemon-gateway.service" in res.stdout      # the gateway comes up anyway
    conf = root / "etc" / "nftables.conf"
    assert conf.read_text() == f"#!/usr/sbin/nft -f\n{INCLUDE}\n"
    assert (root / "etc" / "nftables.d" / "kemon-gateway.nft").is_file()


def test_a_broken_firewall_is_refused_and_the_image_unchanged(image: Path, bundle: Path,
                                                              tmp_path: Path) -> None:
    site = site_ruleset(tmp_path)
    text = site.read_text()
    site.write_text(text.replace("$METER_NET", "$METER_NETS", 1))    # an undefined variable
    line = refused(image, bundle, "--firewall", str(site))
    assert line.startswith(f"error: --firewall: {site}: nft -c refuses it: {site}:")
    assert "METER_NETS" in line
    site.write_text(text.replace("policy drop;", "policy dorp;", 1))
    assert "syntax error" in refused(image, bundle, "--firewall", str(site))
    assert "not found" in refused(image, bundle, "--firewall", str(tmp_path / "none.nft"))
