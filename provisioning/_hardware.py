"""The ``hardware/`` files an SD-card image carries for its gateway: udev rules, the RS-485
HAT's ``config.txt`` lines and a site's firewall.

``udev_rules`` is ``hardware/udev/99-kemon-rs485.rules`` as package data. ``hat_names`` and
``load_hat`` read the snippets of ``hardware/rs485/config.txt.d/`` (package data under
``provisioning/data/config.txt.d``); ``kemon_block`` turns the chosen ones into one marked block
and ``with_kemon_block`` puts that block into ``config.txt`` in place of an earlier one (pure
text functions). ``check_ruleset`` has ``nft -c`` judge a technician's nftables file before it
goes into a bundle.

Errors: ``HardwareError`` (an unknown HAT, a refused ruleset, a ``config.txt`` whose Kemon
block was cut in half), one line.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

__all__ = ["BLOCK_END", "HardwareError", "Hat", "check_ruleset", "hat_names", "kemon_block",
           "load_hat", "udev_rules", "with_kemon_block"]

log = logging.getLogger(__name__)

UDEV_RULES = "99-kemon-rs485.rules"
SNIPPETS = "config.txt.d"                   # under provisioning/data/, a link to hardware/rs485/
BLOCK_START = "# --- kemon: {names} (kemon provision image --hat) ---"
BLOCK_END = "# --- end kemon ---"
# config.txt conditional filters (Raspberry Pi documentation, "config.txt", "Conditional
# filters"): a line [pi4], [pi5], … applies what follows to that model only, until the next
# filter; [all] ends every filter. The block opens each snippet with [all] and ends in [all].
ALL = "[all]"
_START_LINE = re.compile(r"^# --- kemon: .*$", re.MULTILINE)
_END_LINE = re.compile(rf"^{re.escape(BLOCK_END)}[ \t]*$\n?", re.MULTILINE)
_OPERATION_NOT_PERMITTED = "Operation not permitted"      # strerror(EPERM)


class HardwareError(Exception):
    """A hardware file cannot go onto the image as asked."""


@dataclasses.dataclass(frozen=True)
class Hat:
    """One ``config.txt`` snippet: its name (the file's stem) and its non-comment lines."""

    name: str
    lines: tuple[str, ...]


def _data() -> resources.abc.Traversable:
    return resources.files("provisioning").joinpath("data")


def udev_rules() -> bytes:
    """``hardware/udev/99-kemon-rs485.rules``, as this installation carries it."""
    try:
        return _data().joinpath(UDEV_RULES).read_bytes()
    except OSError:
        raise HardwareError(f"this installation of Kemon lacks provisioning/data/{UDEV_RULES}: "
                            "reinstall it") from None


def hat_names() -> list[str]:
    """The snippets there are, by name (``sc16is752-spi1``, …)."""
    folder = _data().joinpath(SNIPPETS)
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".txt") for p in folder.iterdir()
                  if p.name.endswith(".txt"))


def load_hat(name: str) -> Hat:
    """The snippet ``name``; ``HardwareError`` listing the known names if there is none."""
    names = hat_names()
    if name not in names:
        raise HardwareError(f"no HAT snippet named {name!r}; known: {', '.join(names) or 'none'}")
    text = _data().joinpath(SNIPPETS, f"{name}.txt").read_text(encoding="utf-8")
    return Hat(name, snippet_lines(text))


def snippet_lines(text: str) -> tuple[str, ...]:
    """The lines of a snippet that ``config.txt`` acts on: neither blank nor a comment."""
    return tuple(line.strip() for line in text.splitlines()
                 if line.strip() and not line.lstrip().startswith("#"))


def kemon_block(hats: Sequence[Hat]) -> str:
    """The marked block for ``hats`` (empty when none adds a line), ending in a newline.

    Each snippet is opened with ``[all]``, so a conditional section before it (in config.txt
    or in the previous snippet) does not capture it, and the block ends in ``[all]``, so it
    captures nothing after it.
    """
    adding = [hat for hat in hats if hat.lines]
    if not adding:
        return ""
    lines = [BLOCK_START.format(names=", ".join(hat.name for hat in adding))]
    for hat in adding:
        lines += [f"# {hat.name} (hardware/rs485/config.txt.d/{hat.name}.txt)", ALL]
        lines += hat.lines[1:] if hat.lines[0] == ALL else hat.lines
    if [line for line in lines if line.startswith("[")][-1] != ALL:
        lines.append(ALL)
    lines.append(BLOCK_END)
    return "\n".join(lines) + "\n"


def with_kemon_block(config: str, block: str) -> str:
    """``config`` (the text of config.txt) without its earlier Kemon block, and with ``block``
    at its end; ``block`` empty: only the removal."""
    starts = list(_START_LINE.finditer(config))
    if len(starts) > 1:
        raise HardwareError("config.txt has more than one '# --- kemon:' line: keep one "
                            "Kemon block (or none) and try again")
    if starts:
        end = _END_LINE.search(config, starts[0].end())
        if end is None:
            raise HardwareError(f"config.txt has a '# --- kemon:' line but no '{BLOCK_END}' "
                                "after it: mend the block by hand and try again")
        config = config[:starts[0].start()] + config[end.end():]
    if block and config and not config.endswith("\n"):
        config += "\n"
    return config + block


def check_ruleset(path: Path) -> str:
    """Have ``nft -c`` (check, apply nothing) judge the ruleset in ``path``; what was done, as
    a phrase. ``HardwareError`` with nft's first error line when it refuses the file.

    As root ``nft -c -f`` runs as it is (as tests/test_hardware.py does); otherwise inside
    ``unshare -rn`` (a network namespace of our own, where we may talk to netfilter). Without
    ``nft`` here, or where neither is allowed, the file goes unchecked and the phrase says so.
    """
    try:
        if not path.read_bytes().strip():
            raise HardwareError("it is empty: give the ruleset adapted from "
                                "hardware/nftables/kemon-gateway.nft")
    except FileNotFoundError:
        raise HardwareError("not found") from None
    except IsADirectoryError:
        raise HardwareError("is a folder, not an nftables file") from None
    except OSError as exc:
        raise HardwareError(f"cannot read it: {exc.strerror or exc}") from None
    nft = shutil.which("nft")
    if nft is None:
        return "NOT checked: nft is not installed here (apt install nftables)"
    command = [nft, "-c", "-f", str(path)]
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 and unshare is not None:
        command = [unshare, "-rn", *command]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"NOT checked: {Path(command[0]).name} did not run ({exc})"
    if proc.returncode == 0:
        return "checked with nft -c: accepted"
    log.debug("nft -c on %s: exit %d: %s", path, proc.returncode, proc.stderr)
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    # nft names each fault in the file as FILE:LINE:COLUMNS: Error: …; a refusal by the kernel
    # to let us talk to netfilter at all comes as "netlink: Error: …: Operation not permitted"
    faults = [line for line in lines if "Error:" in line and not line.startswith("netlink:")]
    if not faults and _OPERATION_NOT_PERMITTED in proc.stderr:
        return "NOT checked: nft -c needs root (or user namespaces) on this machine"
    first = (faults or lines or [f"exit status {proc.returncode}"])[0]
    raise HardwareError(f"nft -c refuses it: {first}")
