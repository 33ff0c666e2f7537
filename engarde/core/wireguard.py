"""Reading WireGuard's clear-text message header, without keys and without adding a byte.

Theory of operation: every WireGuard message starts with a type byte and three zero bytes.
  1 handshake initiation  148 B   sender_index @4
  2 handshake response     92 B   sender_index @4, receiver_index @8
  3 cookie reply           64 B   receiver_index @4
  4 transport data        >= 32 B                 receiver_index @4, counter (u64 LE) @8
Transport data is the 16-byte header, the encrypted packet and a 16-byte tag. WireGuard pads the
packet to a multiple of 16 bytes *but never beyond the interface MTU*, so a packet that fills an
MTU which is not a multiple of 16 (the default 1420: 1452-byte messages) is not aligned: any
length from 32 bytes up is transport data.
`message_type()` returns 1-4 for a datagram with that shape and JUNK (0) for anything else, so the
server can count and drop junk before it reaches WireGuard or its client table.

The server relay also learns which session indices its own WireGuard handed out (the sender_index
of the initiations and responses WireGuard sends). A client address proves it is a real peer when
it sends transport data (or a response) addressed to one of those indices: an off-path spoofer
cannot know them. What this module does not do: verify MACs (that needs keys), or deduplicate.
"""

from __future__ import annotations

JUNK = 0
INITIATION = 1
RESPONSE = 2
COOKIE_REPLY = 3
DATA = 4

_SIZES = {INITIATION: 148, RESPONSE: 92, COOKIE_REPLY: 64}
DATA_MIN = 32


def message_type(data: bytes | bytearray | memoryview, n: int) -> int:
    """The WireGuard message type of the first `n` bytes of `data`, or JUNK."""
    if n < DATA_MIN or data[1] or data[2] or data[3]:
        return JUNK
    kind = data[0]
    if kind == DATA:
        return DATA
    return kind if _SIZES.get(kind) == n else JUNK


def index_at(data: bytes | bytearray | memoryview, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "little")


def local_index_of(kind: int, data: bytes | bytearray | memoryview) -> int | None:
    """For a message our WireGuard sends: the session index it just created, if any."""
    if kind in (INITIATION, RESPONSE):
        return index_at(data, 4)
    return None


def addressed_index(kind: int, data: bytes | bytearray | memoryview) -> int | None:
    """For a message from a peer: which of our session indices it is addressed to, if any."""
    if kind == DATA:
        return index_at(data, 4)
    if kind == RESPONSE:
        return index_at(data, 8)
    return None
