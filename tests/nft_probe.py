"""Run inside a fresh network namespace (``unshare -n python tests/nft_probe.py RULES CASES``):
builds a gateway with two links, loads an nftables file, and reports which packets get through.

The gateway has ``eth0`` (uplink, 10.0.0.2/24) and ``eth1`` (meter side, 192.168.10.2/24), each a
veth whose other end (``up0``, ``met0``) is watched with a packet socket; the far hosts 10.0.0.9
and 192.168.10.9 have static neighbour entries so that frames leave without ARP. Cases (JSON
list of ``[kind, host, port]``):

- ``out-tcp`` / ``out-udp``: the gateway connects/sends to ``host:port``; passed when the SYN or
  datagram appears on the far end of the link;
- ``in-tcp``: a SYN from ``host`` to the gateway's ``port`` is injected on the far end; passed
  when any TCP answer (SYN-ACK or RST) comes back out;
- ``fwd-tcp``: a SYN from ``host`` (one side) to the other side's far host is injected, with
  IPv4 forwarding switched on; passed when it appears on the other link.

Prints one JSON list ``[[kind, host, port, passed], ...]``. Everything it creates lives in the
namespace and vanishes with the process.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

UPLINK, METER = ("eth0", "up0", "10.0.0.2", "10.0.0.9"), ("eth1", "met0", "192.168.10.2",
                                                             "192.168.10.9")
FAR_MAC = bytes.fromhex("020000000009")
ETH_IP = 0x0800


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def mac_of(interface: str) -> bytes:
    """The interface's MAC address (``/sys`` still shows the parent namespace's links)."""
    out = subprocess.run(["ip", "-j", "link", "show", "dev", interface], check=True,
                         capture_output=True, text=True).stdout
    return bytes.fromhex(json.loads(out)[0]["address"].replace(":", ""))


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_frame(dst_mac: bytes, src: str, dst: str, dport: int) -> bytes:
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    tcp_sum = checksum(s + d + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", tcp_sum) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + FAR_MAC + struct.pack("!H", ETH_IP) + ip + tcp


def main() -> None:
    rules, cases = sys.argv[1], json.loads(sys.argv[2])
    for gw_if, far_if, gw_ip, far_ip in (UPLINK, METER):
        sh("ip", "link", "add", gw_if, "type", "veth", "peer", "name", far_if)
        sh("ip", "link", "set", gw_if, "up")
        sh("ip", "link", "set", far_if, "up")
        sh("ip", "addr", "add", f"{gw_ip}/24", "dev", gw_if)
        sh("ip", "neigh", "add", far_ip, "lladdr", FAR_MAC.hex(":"), "dev", gw_if, "nud",
           "permanent")
    sh("ip", "link", "set", "lo", "up")
    sh("nft", "-f", rules)
    taps = {}
    for _, far_if, _, _ in (UPLINK, METER):
        tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_IP))
        tap.bind((far_if, 0))
        tap.setblocking(False)
        taps[far_if] = tap

    def side(host: str) -> tuple[str, str, str, str]:
        return UPLINK if host.startswith("10.") else METER

    def seen(far_if: str, proto: int, port: int, *, source_port: bool = False) -> bool:
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            try:
                frame = taps[far_if].recv(2048)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            ip = frame[14:]
            ihl = (ip[0] & 15) * 4
            sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
            if ip[9] == proto and (sport if source_port else dport) == port:
                return True
        return False

    def drain() -> None:
        for tap in taps.values():
            while True:
                try:
                    tap.recv(2048)
                except BlockingIOError:
                    break

    results = []
    for kind, host, port in cases:
        drain()
        gw_if, far_if, gw_ip, far_ip = side(host)
        if kind == "out-tcp":
            with socket.socket() as s:
                s.setblocking(False)
                s.connect_ex((host, port))
                passed = seen(far_if, 6, port)
        elif kind == "out-udp":
            with socket.socket(type=socket.SOCK_DGRAM) as s:
                try:
                    s.sendto(b"x", (host, port))
                except PermissionError:             # dropped in output: EPERM at once
                    passed = False
                else:
                    passed = seen(far_if, 17, port)
        elif kind == "in-tcp":
            taps[far_if].send(syn_frame(mac_of(gw_if), host, gw_ip, port))
            passed = seen(far_if, 6, port, source_port=True)
        elif kind == "fwd-tcp":
            Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
            other = METER if side(host) is UPLINK else UPLINK
            taps[far_if].send(syn_frame(mac_of(gw_if), host, other[3], port))
            passed = seen(other[1], 6, port)
        else:
            raise SystemExit(f"unknown case kind {kind!r}")
        results.append([kind, host, port, passed])
    print(json.dumps(results))


if __name__ == "__main__":
    main()
