"""The repository files in hardware/ (besides the meter profiles) are what their READMEs say:
the nftables file is accepted by nft and, loaded in a throw-away network namespace, lets out
only what it promises and forwards nothing; the udev rules parse (with a lint of our own and
with udev's own parser) and each names a port rs485-N; the config.txt snippets are well formed;
every README names every file beside it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

HW = ROOT / "hardware"
NFT_FILE = HW / "nftables" / "kemon-gateway.nft"
RULES_FILE = HW / "udev" / "99-kemon-rs485.rules"
SNIPPETS = sorted((HW / "rs485" / "config.txt.d").glob("*.txt"))
PROBE = ROOT / "tests" / "nft_probe.py"


def need(command: str, package: str) -> str:
    path = shutil.which(command)
    assert path, f"{command} is required (apt-get install {package})"
    return path


# --- nftables -----------------------------------------------------------------------------------

def nft_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need("nft", "nftables"), "-c", "-f", str(path)], capture_output=True,
                          text=True, timeout=30, check=False)


def test_nft_file_is_accepted_by_nft() -> None:
    res = nft_check(NFT_FILE)
    assert res.returncode == 0, res.stderr
    assert res.stdout == res.stderr == ""


def test_a_broken_nft_file_is_refused(tmp_path: Path) -> None:
    """The check above can fail: a misspelt policy and an undefined variable are both caught."""
    text = NFT_FILE.read_text(encoding="utf-8")
    for broken in (text.replace("policy drop;", "policy dorp;", 1),
                   text.replace("$METER_NET", "$METER_NETS", 1)):
        assert broken != text
        copy = tmp_path / "broken.nft"
        copy.write_text(broken, encoding="utf-8")
        res = nft_check(copy)
        assert res.returncode != 0 and "Error" in res.stderr, res


def probe(rules: Path, cases: list[tuple[str, str, int]]) -> dict[tuple[str, str, int], bool]:
    """Which of ``cases`` pass the firewall ``rules`` (tests/nft_probe.py, in a new netns)."""
    need("unshare", "util-linux")
    need("ip", "iproute2")
    res = subprocess.run([need("unshare", "util-linux"), "-n", sys.executable, str(PROBE),
                          str(rules), json.dumps(cases)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    return {(k, h, p): passed for k, h, p, passed in json.loads(res.stdout)}


UPLINK_HOST, METER_HOST, OTHER_METER_NET_HOST = "10.0.0.9", "192.168.10.9", "192.168.10.77"
EXPECTED = {
    # what the gateway may open: Modbus TCP to the meter subnet; MQTT/TLS, DNS, NTP, HTTPS up
    ("out-tcp", METER_HOST, 502): True,
    ("out-tcp", UPLINK_HOST, 8883): True,
    ("out-udp", UPLINK_HOST, 53): True,
    ("out-tcp", UPLINK_HOST, 53): True,
    ("out-udp", UPLINK_HOST, 123): True,
    ("out-tcp", UPLINK_HOST, 443): True,
    # and nothing else
    ("out-tcp", UPLINK_HOST, 1883): False,          # MQTT without TLS
    ("out-tcp", UPLINK_HOST, 502): False,           # Modbus towards the office side
    ("out-tcp", METER_HOST, 22): False,
    ("out-tcp", METER_HOST, 8883): False,           # the uplink protocol on the meter side
    ("out-udp", METER_HOST, 123): False,
    ("out-udp", UPLINK_HOST, 161): False,
    # nobody gets in from either side
    ("in-tcp", UPLINK_HOST, 22): False,
    ("in-tcp", METER_HOST, 22): False,
    ("in-tcp", UPLINK_HOST, 502): False,
    # nothing is forwarded either way, though IP forwarding is switched on for the probe
    ("fwd-tcp", METER_HOST, 8883): False,
    ("fwd-tcp", UPLINK_HOST, 502): False,
}


def test_nft_rules_pass_only_what_they_promise() -> None:
    cases = [*EXPECTED, ("out-tcp", OTHER_METER_NET_HOST, 502)]
    got = probe(NFT_FILE, cases)
    assert {c: got[c] for c in EXPECTED} == EXPECTED
    assert got[("out-tcp", OTHER_METER_NET_HOST, 502)] is False   # no static neighbour: no frame


def test_the_probe_sees_what_an_open_variant_lets_through(tmp_path: Path) -> None:
    """The same probe against a variant with the technicians' SSH rule enabled (TECH_NET = the
    uplink) and forwarding accepted: inbound SSH and forwarded packets now show, so the False
    results above are the firewall's doing, not the probe's blindness."""
    text = NFT_FILE.read_text(encoding="utf-8")
    open_text = (text
                 .replace("# define TECH_NET = 10.20.30.0/24", "define TECH_NET = 10.0.0.0/24")
                 .replace("# iifname $UPLINK_IF ip saddr $TECH_NET",
                          "iifname $UPLINK_IF ip saddr $TECH_NET")
                 .replace("hook forward priority filter; policy drop;",
                          "hook forward priority filter; policy accept; accept"))
    assert open_text.count("TECH_NET") == text.count("TECH_NET")
    assert "policy accept; accept" in open_text and "define TECH_NET = 10.0.0.0/24" in open_text
    variant = tmp_path / "open.nft"
    variant.write_text(open_text, encoding="utf-8")
    got = probe(variant, [("in-tcp", UPLINK_HOST, 22), ("in-tcp", METER_HOST, 22),
                          ("fwd-tcp", METER_HOST, 8883)])
    assert got == {("in-tcp", UPLINK_HOST, 22): True,        # from the technicians' subnet
                   ("in-tcp", METER_HOST, 22): False,        # the rule is for the uplink only
                   ("fwd-tcp", METER_HOST, 8883): True}


def test_nft_file_has_the_promised_shape() -> None:
    """Variables for both sides; no forwarding rule accepts anything; logging is rate-limited."""
    text = NFT_FILE.read_text(encoding="utf-8")
    for name in ("METER_IF", "METER_NET", "UPLINK_IF", "METER_TCP_PORTS", "MQTT_TLS_PORTS"):
        assert re.search(rf"^define {name} = ", text, re.M), name
    forward = text.split("chain forward {", 1)[1].split("}", 1)[0]
    assert "policy drop" in forward and " accept" not in forward.replace("policy", "")
    logs = [line for line in text.splitlines() if " log " in line and not line.strip()
            .startswith("#")]
    assert len(logs) == 3 and all("limit rate" in line for line in logs)


# --- udev ---------------------------------------------------------------------------------------

MATCH_ONLY = {"ACTION", "DEVPATH", "KERNEL", "KERNELS", "SUBSYSTEM", "SUBSYSTEMS", "DRIVER",
              "DRIVERS", "ATTRS", "TAGS", "TEST", "PROGRAM", "RESULT", "CONST"}
ASSIGN_ONLY = {"OWNER", "GROUP", "MODE", "RUN", "LABEL", "GOTO", "IMPORT", "OPTIONS",
               "SECLABEL"}
BOTH = {"NAME", "SYMLINK", "ENV", "TAG", "ATTR", "SYSCTL"}
WITH_ATTR = {"ATTR", "ATTRS", "ENV", "TEST", "IMPORT", "RUN", "SYSCTL", "CONST", "SECLABEL"}
PAIR = re.compile(r'(?P<key>[A-Z]+)(?:\{(?P<attr>[^{}"]+)\})?(?P<op>==|!=|\+=|-=|:=|=)'
                  r'"(?P<value>[^"]*)"')


def lint_rules(text: str) -> list[list[tuple[str, str | None, str, str]]]:
    """Each non-comment line as its list of (key, attr, op, value); AssertionError naming the
    line when it is not comma-separated KEY{attr}OP"value" pairs with a known key and an operator
    that key takes."""
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assert not line.rstrip().endswith("\\"), f"line {number}: no continuation lines here"
        pairs, rest = [], line.strip()
        while True:
            m = PAIR.match(rest)
            assert m, f"line {number}: cannot read {rest!r}"
            key, attr, op, value = m["key"], m["attr"], m["op"], m["value"]
            assert key in MATCH_ONLY | ASSIGN_ONLY | BOTH, f"line {number}: unknown key {key}"
            assert (attr is not None) == (key in WITH_ATTR) or key == "IMPORT", \
                f"line {number}: {key} {'needs' if attr is None else 'takes no'} {{attribute}}"
            if key in MATCH_ONLY:
                assert op in ("==", "!="), f"line {number}: {key} only compares"
            if key in ASSIGN_ONLY:
                assert op in ("=", "+=", ":="), f"line {number}: {key} is only assigned"
            pairs.append((key, attr, op, value))
            rest = rest[m.end():]
            if not rest:
                break
            assert rest.startswith(", "), f"line {number}: pairs are separated by ', '"
            rest = rest[2:]
        rules.append(pairs)
    return rules


def test_udev_rules_lint_and_each_names_a_port() -> None:
    rules = lint_rules(RULES_FILE.read_text(encoding="utf-8"))
    assert len(rules) >= 5
    names = []
    for pairs in rules:
        assert any(op in ("==", "!=") for _, _, op, _ in pairs), pairs      # matches something
        assert ("SUBSYSTEM", None, "==", "tty") in pairs, pairs
        links = [v for k, _, op, v in pairs if k == "SYMLINK" and op == "+="]
        assert len(links) == 1 and re.fullmatch(r"rs485-[1-9][0-9]*", links[0]), pairs
        names.append(links[0])
        assert ("GROUP", None, "=", "dialout") in pairs and ("MODE", None, "=", "0660") in pairs
    assert len(set(names)) == len(names), names                      # one name, one rule
    assert names == [f"rs485-{i}" for i in range(1, len(names) + 1)]  # numbered in order
    text = RULES_FILE.read_text(encoding="utf-8")
    for kind in ("ttyAMA", "ttySC0", "ttySC1", "ID_PATH", "ID_SERIAL_SHORT"):
        assert kind in text, kind


@pytest.mark.parametrize("bad", [
    'SUBSYSTEM=="tty" KERNEL=="ttySC0", SYMLINK+="rs485-1"',       # missing comma
    'SUBSYSTEM=="tty", KERNELS="x", SYMLINK+="rs485-1"',            # assigns a match-only key
    'SUBSYSTEM=="tty", GROUP=="dialout"',                           # compares an assign-only key
    'SUBSYSTEM=="tty", ATTRS=="0403"',                              # attribute missing
    'SUBSYSTEM=="tty", KERNAL=="ttySC0"',                           # unknown key
    "SUBSYSTEM=='tty'",                                             # single quotes
])
def test_the_lint_refuses_malformed_rules(bad: str) -> None:
    with pytest.raises(AssertionError):
        lint_rules(bad + "\n")


TTY = next((name for name in ("ttyS0", "console", "tty") if Path("/sys/class/tty", name).exists()),
           "ttyS0")     # a tty every machine has, for udev to run the rules on


def udevadm_test(rules_text: str, tmp_path: Path) -> str:
    """``udevadm test`` of a tty with ``rules_text`` as the only local rules file, in a private
    mount namespace (fresh /run and /dev) so nothing on this machine is touched."""
    udevadm = need("udevadm", "udev")
    rules_dir = tmp_path / "rules.d"
    rules_dir.mkdir(parents=True)
    (rules_dir / RULES_FILE.name).write_text(rules_text, encoding="utf-8")
    script = (f"mount --bind {rules_dir} /etc/udev/rules.d && mount -t tmpfs none /run && "
              f"mount -t tmpfs none /dev && {udevadm} test --action=add /sys/class/tty/{TTY}")
    res = subprocess.run([need("unshare", "util-linux"), "-m", "sh", "-c", script],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    assert f"Reading rules file: /etc/udev/rules.d/{RULES_FILE.name}" in out, out
    return out


def complaints(out: str) -> list[str]:
    return [line for line in out.splitlines()
            if line.startswith(f"/etc/udev/rules.d/{RULES_FILE.name}:")]


def test_udev_parses_the_rules_without_complaint(tmp_path: Path) -> None:
    assert complaints(udevadm_test(RULES_FILE.read_text(encoding="utf-8"), tmp_path)) == []


def test_udev_complains_about_a_broken_copy(tmp_path: Path) -> None:
    broken = RULES_FILE.read_text(encoding="utf-8").replace('KERNEL=="ttySC0"', 'KERNEL="ttySC0"')
    assert complaints(udevadm_test(broken, tmp_path))


def test_udev_applies_a_rule_of_this_form(tmp_path: Path) -> None:
    """The SC16IS752 rule, pointed at a tty this machine has, gives it the link, group and mode."""
    text = RULES_FILE.read_text(encoding="utf-8").replace('KERNEL=="ttySC0"', f'KERNEL=="{TTY}"')
    out = udevadm_test(text, tmp_path / "real")
    assert complaints(out) == []
    assert f"{RULES_FILE.name}:" in out and "LINK 'rs485-2'" in out, out
    assert re.search(rf"{re.escape(RULES_FILE.name)}:\d+ MODE 0660", out), out


# --- config.txt snippets ------------------------------------------------------------------------

SECTION = re.compile(r"\[[a-z0-9_:=]+\]")
OVERLAY = re.compile(r"dt(?:overlay|param)=[a-z0-9][a-z0-9_-]*(?:,[a-z0-9_]+(?:=[^,\s]+)?)*")
SETTING = re.compile(r"[a-z][a-z0-9_]*=[^\s=]+")


def lint_snippet(text: str) -> None:
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            # a commented-out directive must still be one a user can uncomment as it is
            line = line[1:]
            if not re.match(r"(dtoverlay|dtparam)=", line):
                continue
        if not line:
            continue
        if line.startswith(("dtoverlay=", "dtparam=")):
            assert OVERLAY.fullmatch(line), f"line {number}: {raw!r}"
        else:
            assert SECTION.fullmatch(line) or SETTING.fullmatch(line), f"line {number}: {raw!r}"


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda p: p.name)
def test_config_txt_snippets_are_well_formed(snippet: Path) -> None:
    text = snippet.read_text(encoding="utf-8")
    lint_snippet(text)
    assert text.startswith("#"), "each snippet starts by saying what it is for"
    sections = SECTION.findall(text)
    assert not sections or sections[-1] == "[all]", "end in [all], so lines after it apply"


@pytest.mark.parametrize("bad", ["dtoverlay=sc16is752-spi1 int_pin=24", "enable_uart = 1",
                                 "dtoverlay=uart3,,ctsrts", "[pi4", "#dtoverlay=uart3 ctsrts"])
def test_the_snippet_lint_refuses_malformed_lines(bad: str) -> None:
    with pytest.raises(AssertionError):
        lint_snippet(bad + "\n")


def test_snippets_cover_the_kinds_of_hat() -> None:
    text = {p.name: p.read_text(encoding="utf-8") for p in SNIPPETS}
    assert "dtoverlay=disable-bt" in text["uart-gpio14-15.txt"]
    assert "dtoverlay=sc16is752-spi1,int_pin=24" in text["sc16is752-spi1.txt"]
    assert "dtoverlay=uart3" in text["pi4-pi5-extra-uarts.txt"]
    assert not [line for line in text["usb-adapters.txt"].splitlines()
                if line.strip() and not line.startswith("#")]        # nothing to add for USB


# --- READMEs ------------------------------------------------------------------------------------

# described elsewhere (docs/configuration.md) and owned by the meter-profile work
NOT_LISTED_FILE_BY_FILE = {HW / "profiles"}


def test_every_readme_names_every_file_beside_it() -> None:
    readmes = sorted(HW.rglob("README.md"))
    assert {p.parent for p in readmes} >= {HW, HW / "rs485", HW / "udev", HW / "nftables"}
    for readme in readmes:
        text = readme.read_text(encoding="utf-8")
        for child in sorted(readme.parent.iterdir()):
            if child.name in ("README.md", "__pycache__"):
                continue
            name = f"{child.name}/" if child.is_dir() else child.name
            assert name in text, f"{readme.relative_to(ROOT)} does not mention {name}"
            if child.is_dir() and not (child / "README.md").exists() \
                    and child not in NOT_LISTED_FILE_BY_FILE:
                for inner in sorted(child.iterdir()):
                    assert inner.name in text, \
                        f"{readme.relative_to(ROOT)} does not mention {inner.name}"
