"""Raw IPv4/UDP packets with any source address, for the spoofing scripts in this directory
(run inside a lab namespace, as root)."""

from __future__ import annotations

import socket
import struct


def ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def packet(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4 header (checksummed) + UDP header (no checksum) + payload."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    header = header[:10] + struct.pack("!H", ip_checksum(header)) + header[12:]
    return header + udp


def raw_socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
