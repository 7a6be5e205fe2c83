"""Finding the FAT boot partition of an SD-card image and writing into it without mounting.

A Raspberry Pi OS ``.img`` is a whole disk: an MBR partition table whose first partition is the
FAT32 boot partition (mounted on the device at ``/boot/firmware`` since bookworm, ``/boot``
before), then the ext4 root. ``locate_fat`` reads the partition table in pure Python; a bare FAT
file system (no partition table) is accepted too. ``FatImage`` reads and writes files inside that
file system with GNU mtools (``mcopy``/``mmd``/``mmove``/``mdeltree`` with ``-i IMAGE@@OFFSET``),
so no loop device, no mount and no root are needed.

Errors: ``ImageError`` (the image is not what we can write into, or mtools failed), one line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["FatImage", "FatVolume", "ImageError", "fat_kind", "find_volume", "locate_fat"]

log = logging.getLogger(__name__)

SECTOR = 512                # MBR addressing unit: LBA values count 512-byte sectors in images

# Legacy MBR layout (UEFI Specification 2.10, §5.2.1 "Legacy Master Boot Record", table 5-1):
# boot code 0..439, disk signature 440, partition records at 446 (4 × 16 bytes), signature
# 0xAA55 (bytes 55 AA) at 510.
MBR_TABLE = 446
MBR_ENTRY = 16
MBR_ENTRIES = 4
BOOT_SIGNATURE = b"\x55\xaa"
BOOT_SIGNATURE_AT = 510
# Partition record (same table 5-2): OSType at +4, StartingLBA (uint32 LE) at +8, SizeInLBA
# (uint32 LE) at +12.
ENTRY_TYPE, ENTRY_LBA, ENTRY_SIZE = 4, 8, 12
GPT_PROTECTIVE = 0xEE       # UEFI 2.10 §5.2.3: a protective MBR's single partition type
# FAT partition type codes (A. Brouwer, "List of partition identifiers for PCs"): 0x01 FAT12,
# 0x04 FAT16 < 32 MB, 0x06 FAT16, 0x0B FAT32 (CHS), 0x0C FAT32 (LBA, what Raspberry Pi OS
# uses), 0x0E FAT16 (LBA).
FAT_TYPES = {0x01: "FAT12", 0x04: "FAT16", 0x06: "FAT16", 0x0B: "FAT32", 0x0C: "FAT32 LBA",
             0x0E: "FAT16 LBA"}

# Compressed downloads (magic numbers: xz file format 1.1.0 §2.1.1.1; RFC 1952 §2.3.1 gzip;
# PKWARE APPNOTE 4.3.7 zip local header; zstd RFC 8878 §3.1.1).
_COMPRESSED = {b"\xfd7zXZ\x00": "xz", b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip",
               b"\x28\xb5\x2f\xfd": "zstd"}


class ImageError(Exception):
    """The image cannot be written into (not a disk image, no FAT partition, mtools failed)."""


@dataclasses.dataclass(frozen=True)
class FatVolume:
    """Where the FAT file system sits in the image file."""

    offset: int                 # bytes from the start of the image file
    size: int                   # bytes
    partition: int | None       # 1-based MBR partition number; None for a bare file system
    type_code: int | None       # MBR partition type; None for a bare file system
    fat: str                    # "FAT12", "FAT16" or "FAT32", from the boot sector

    def describe(self) -> str:
        where = ("a bare FAT file system (no partition table)" if self.partition is None else
                 f"MBR partition {self.partition} (type 0x{self.type_code or 0:02x} "
                 f"{FAT_TYPES.get(self.type_code or 0, '?')})")
        return (f"{where}, {self.fat}, at byte offset {self.offset} (sector "
                f"{self.offset // SECTOR}), {self.size / 2**20:.0f} MiB")


def fat_kind(sector: bytes) -> str | None:
    """``FAT12``/``FAT16``/``FAT32`` when ``sector`` is a FAT boot sector, else None.

    Offsets from Microsoft's "FAT: General Overview of On-Disk Format" 1.03 (fatgen103), §3.1
    and §3.3: jump instruction EB xx 90 or E9 xx xx at 0, BPB_BytsPerSec at 11 (512, 1024, 2048
    or 4096), BPB_SecPerClus at 13 (a power of two up to 128), BPB_RsvdSecCnt at 14 (not 0),
    BPB_NumFATs at 16, BPB_FATSz16 at 22 (0 on FAT32), BS_FilSysType at 54 (FAT12/16) or 82
    (FAT32), signature 55 AA at 510.
    """
    if len(sector) < SECTOR or sector[BOOT_SIGNATURE_AT:SECTOR] != BOOT_SIGNATURE:
        return None
    if sector[0] not in (0xEB, 0xE9):
        return None
    bytes_per_sector = int.from_bytes(sector[11:13], "little")
    per_cluster, reserved, fats = sector[13], int.from_bytes(sector[14:16], "little"), sector[16]
    if bytes_per_sector not in (512, 1024, 2048, 4096) or per_cluster not in (
            1, 2, 4, 8, 16, 32, 64, 128) or reserved == 0 or fats == 0:
        return None
    if int.from_bytes(sector[22:24], "little") == 0 and sector[82:87] == b"FAT32":
        return "FAT32"
    if sector[54:59] in (b"FAT12", b"FAT16"):
        return sector[54:59].decode("ascii")
    if sector[54:57] == b"FAT":
        return "FAT16"
    return None


def find_volume(image: Path) -> FatVolume:
    """The FAT file system in ``image`` (a disk image or a bare file system), checked down to
    its own boot sector."""
    try:
        with image.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            volume = locate_fat(f.read(SECTOR), size)
            f.seek(volume.offset)
            kind = fat_kind(f.read(SECTOR))
    except FileNotFoundError:
        raise ImageError("not found") from None
    except OSError as exc:
        raise ImageError(f"cannot read it: {exc.strerror or exc}") from None
    if kind is None:
        raise ImageError(f"partition {volume.partition} (type 0x{volume.type_code or 0:02x}) "
                         "holds no FAT file system")
    return dataclasses.replace(volume, fat=kind)


def locate_fat(head: bytes, image_size: int) -> FatVolume:
    """The FAT file system to write into, from the image's first sector ``head``.

    A FAT boot sector at 0 is a bare file system; otherwise the MBR's first FAT-typed
    partition. The caller still checks that partition's own boot sector (``fat_kind``).
    """
    for magic, packer in _COMPRESSED.items():
        if head.startswith(magic):
            raise ImageError(f"it is {packer}-compressed: decompress it first (e.g. unxz "
                             "2024-11-19-raspios-bookworm-arm64-lite.img.xz)")
    if len(head) < SECTOR:
        raise ImageError(f"only {len(head)} bytes: too small to be a disk image")
    kind = fat_kind(head)
    if kind is not None:
        return FatVolume(offset=0, size=image_size, partition=None, type_code=None, fat=kind)
    if head[BOOT_SIGNATURE_AT:SECTOR] != BOOT_SIGNATURE:
        raise ImageError("not a disk image: no MBR signature 55 AA at byte 510 and no FAT "
                         "boot sector")
    entries = []
    for i in range(MBR_ENTRIES):
        raw = head[MBR_TABLE + i * MBR_ENTRY:MBR_TABLE + (i + 1) * MBR_ENTRY]
        entries.append((i + 1, raw[ENTRY_TYPE], int.from_bytes(raw[ENTRY_LBA:ENTRY_LBA + 4],
                                                                "little"),
                        int.from_bytes(raw[ENTRY_SIZE:ENTRY_SIZE + 4], "little")))
    if any(t == GPT_PROTECTIVE for _, t, _, _ in entries):
        raise ImageError("it has a GPT partition table (protective MBR type 0xee); only MBR "
                         "images (as Raspberry Pi OS ships) are supported")
    for number, type_code, lba, sectors in entries:
        if type_code in FAT_TYPES and sectors > 0:
            offset, size = lba * SECTOR, sectors * SECTOR
            if offset + size > image_size:
                raise ImageError(f"partition {number} ends at byte {offset + size}, beyond the "
                                 f"end of the image ({image_size} bytes): truncated download?")
            return FatVolume(offset=offset, size=size, partition=number, type_code=type_code,
                             fat="?")
    types = ", ".join(f"0x{t:02x}" for _, t, _, n in entries if t or n) or "none"
    raise ImageError(f"no FAT partition in its MBR (partition types: {types})")


class FatImage:
    """Files inside the FAT file system at ``offset`` bytes into ``image``, through mtools.

    Paths are absolute within the file system and use ``/`` (``kemon/gateway.toml``).
    """

    def __init__(self, image: Path, offset: int) -> None:
        if shutil.which("mcopy") is None:
            raise ImageError("mtools is not installed (apt install mtools)")
        self.image = image
        self._drive = f"{image}@@{offset}"
        self._env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": os.devnull}

    def _run(self, *args: str) -> bytes:
        tool, *rest = args
        proc = subprocess.run([tool, "-i", self._drive, *rest], capture_output=True,
                              env=self._env, check=False, timeout=120)
        if proc.returncode != 0:
            why = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise ImageError(f"{tool} {' '.join(rest)}: {why[0] if why else 'failed'}")
        return proc.stdout

    def exists(self, path: str) -> bool:
        parent, _, name = path.rstrip("/").rpartition("/")
        try:
            listing = self._run("mdir", "-b", f"::/{parent}")
        except ImageError:
            return False
        prefix = f"::/{parent}/" if parent else "::/"
        found = {line.removeprefix(prefix).rstrip("/").lower()
                 for line in listing.decode("utf-8", "replace").splitlines()}
        return name.lower() in found        # FAT names compare without case

    def read(self, path: str) -> bytes:
        return self._run("mcopy", "-n", f"::/{path}", "-")

    def write_tree(self, directory: str, files: Mapping[str, bytes]) -> None:
        """Create ``directory`` (it must not exist) holding ``files`` (relative names, may have
        sub-folders), in one mtools call from a private local copy."""
        with tempfile.TemporaryDirectory(prefix="kemon-image-") as tmp:
            top = Path(tmp) / directory
            for name, data in files.items():
                path = top / name
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            self._run("mcopy", "-s", "-D", "o", str(top), "::/")

    def write(self, path: str, data: bytes) -> None:
        """Write (or replace) one file."""
        with tempfile.TemporaryDirectory(prefix="kemon-image-") as tmp:
            local = Path(tmp) / "file"
            local.write_bytes(data)
            self._run("mcopy", "-D", "o", str(local), f"::/{path}")

    def remove_tree(self, path: str) -> None:
        self._run("mdeltree", f"::/{path}")

    def rename(self, old: str, new: str) -> None:
        self._run("mmove", f"::/{old}", f"::/{new}")
