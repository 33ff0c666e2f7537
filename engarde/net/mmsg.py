"""recvmmsg / sendmmsg through ctypes: up to a batch of datagrams per system call.

Theory of operation. A busy socket (the pump's `Batch` limit above one) is read with one
`recvmmsg` into a `Receiver`: a fixed array of receive slots (one anonymous mmap, never
truncating: 64 KiB each), their source addresses and, for the server's wildcard listen socket,
their IP_PKTINFO / IPV6_PKTINFO control messages. Everything is allocated once and reused by
every call; the handlers run one at a time in the pump thread, so one `Receiver` per process
serves all of them. What was read is sent on with `Messages.send_all`: one `sendmmsg` over a
header array made once, whose iovecs point into the receive slots (the client's forward path
points every uplink's header array at the same iovec array: filled once per batch, sent N times).

Errors look like the plain socket calls': an `OSError` built from errno (EAGAIN raises
BlockingIOError, ECONNREFUSED ConnectionRefusedError, ...). A kernel quirk the callers must know:
`sendmmsg` reports an error only when it sent nothing; when message k fails after k > 0 were
sent, it returns k and the error is lost. `send_all` therefore continues from k (the next
call then fails on message k itself and reports why): a message that fails alone is skipped
and counted, a full buffer (EAGAIN) ends the batch for that socket and the rest is counted as
dropped, for that link only; at most MAX_CALLS calls, none of which waits: nothing is ever
retried into a stall.

UDP_SEGMENT (generic segmentation offload for UDP, Linux 4.18+). A `Messages` made with
`segment=True` groups the batch into runs of equal-sized datagrams (the last of a run may be
shorter; at most UDP_MAX_SEGMENTS of them, at most MAX_SEGMENTED_BYTES in all) and sends each run
as one message whose iovecs are the run's datagrams, with a UDP_SEGMENT control message giving
their size: the kernel cuts it back into the same datagrams, in order, on the same path, after
one trip through the stack instead of one per datagram. A run of one is an ordinary message.
The kernel refuses segmentation on some paths (EIO: a device that cannot checksum for it, an
IPsec route; EINVAL: a datagram larger than the path's MTU allows for it): that `Messages`
then stops segmenting for good (logged once), and what the refused call held is sent again as
ordinary messages: nothing is lost to it. ENGARDE_UDP_SEGMENT=0 in the environment turns it
off.

Without the libc symbols (or on a 32-bit ABI, whose layouts are not written down here)
`AVAILABLE` is False and the handlers keep the plain calls; `log_unavailable_once` says so once.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import socket
import struct
from typing import Any

from engarde.net.sockets import IP_PKTINFO, IPV6_PKTINFO, RECV_BYTES, destination_of

logger = logging.getLogger(__name__)

SLOTS = 64  # engarde.net.pump.BATCH: at most this many datagrams per call
MAX_CONTROLS = 256  # reply control messages kept built (as the server's MAX_ANCILLARY)
_CONTROL_STRIDE = socket.CMSG_SPACE(20)  # the largest: in6_pktinfo
MAX_CALLS = 4  # sendmmsg calls per send_all: the first and up to three continuations
_FULL = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})
NAME_BYTES = 28  # sizeof(struct sockaddr_in6), the largest source address a UDP socket reports
_NAME_STRIDE = 32
CONTROL_BYTES = socket.CMSG_SPACE(20) * 2  # IP_PKTINFO and IPV6_PKTINFO, as the plain path
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h
UDP_MAX_SEGMENTS = 64  # the kernel's limit per message before 6.2 (128 since)
MAX_SEGMENTED_BYTES = 65507  # a UDP payload in one IPv4 datagram, before segmentation
_SEGMENT_CONTROL = socket.CMSG_SPACE(2)  # a cmsghdr and the u16 segment size
_SEGMENT_REFUSED = frozenset({errno.EIO, errno.EINVAL, errno.EMSGSIZE, errno.EOPNOTSUPP})


def _kernel_segments() -> bool:
    """Whether this kernel knows UDP_SEGMENT (4.18+). An older one ignores the control message
    and would send a run as one long datagram: ask once, with the socket option of that name."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:  # ENOPROTOOPT
        return False
    return True


SEGMENT = os.environ.get("ENGARDE_UDP_SEGMENT", "1") != "0" and _kernel_segments()


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


HDR = ctypes.sizeof(_Mmsghdr)
IOV = ctypes.sizeof(_Iovec)
# Field positions as indices into the header array seen as 8-byte (Q) and 4-byte (I) words.
_Q_NAME = _Msghdr.msg_name.offset // 8
_I_NAMELEN = _Msghdr.msg_namelen.offset // 4
_Q_IOV = _Msghdr.msg_iov.offset // 8
_Q_IOVLEN = _Msghdr.msg_iovlen.offset // 8
_Q_CONTROL = _Msghdr.msg_control.offset // 8
_Q_CONTROLLEN = _Msghdr.msg_controllen.offset // 8
_I_FLAGS = _Msghdr.msg_flags.offset // 4
_I_LEN = _Mmsghdr.msg_len.offset // 4
_QW = HDR // 8  # words per header
_IW = HDR // 4
MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x20)


def _load() -> tuple[Any, Any] | None:
    if ctypes.sizeof(ctypes.c_void_p) != 8 or HDR != 64:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recv, send = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    recv.restype = ctypes.c_int
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    send.restype = ctypes.c_int
    return recv, send


_CALLS = _load()
AVAILABLE = _CALLS is not None
_recvmmsg, _sendmmsg = _CALLS if _CALLS is not None else (None, None)
_get_errno = ctypes.get_errno
_said_unavailable = False


def log_unavailable_once() -> None:
    """If recvmmsg/sendmmsg cannot be used, log it (once per process)."""
    global _said_unavailable
    if not AVAILABLE and not _said_unavailable:
        _said_unavailable = True
        logger.warning("recvmmsg/sendmmsg not available from libc: one system call per datagram")


def _address_of(buffer: Any) -> int:
    return ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))


def _error() -> OSError:
    err = _get_errno()
    return OSError(err, os.strerror(err))  # OSError picks the subclass: BlockingIOError, ...


# ---- socket addresses --------------------------------------------------------------------------

_SIN = struct.Struct("=H2s4s")  # family, port (network order), address
_SIN6 = struct.Struct("=H2s4s16sI")  # family, port, flowinfo (network order), address, scope
_AF_INET = struct.pack("=H", socket.AF_INET)
_addresses: dict[bytes, tuple[Any, ...]] = {}
_sockaddrs: dict[tuple[Any, ...], bytes] = {}
_CACHE_MAX = 4096  # addresses remembered both ways; past that the caches start over


def address_of(raw: bytes) -> tuple[Any, ...]:
    """A raw sockaddr_in / sockaddr_in6 -> the tuple a Python socket reports for it."""
    found = _addresses.get(raw)
    if found is not None:
        return found
    if len(raw) >= 16 and raw[0:2] == _AF_INET:
        address: tuple[Any, ...] = (
            socket.inet_ntop(socket.AF_INET, raw[4:8]),
            raw[2] << 8 | raw[3],
        )
    elif len(raw) >= NAME_BYTES:
        _, port, flow, ip, scope = _SIN6.unpack_from(raw)
        text = socket.inet_ntop(socket.AF_INET6, ip)
        if scope:  # link-local: Python names the zone as it does ("fe80::1%eth0")
            text = socket.getnameinfo((text, 0, 0, scope), socket.NI_NUMERICHOST)[0]
        address = (text, int.from_bytes(port), int.from_bytes(flow), scope)
    else:
        raise ValueError(f"not an IPv4/IPv6 socket address: {raw.hex()}")
    if len(_addresses) >= _CACHE_MAX:
        _addresses.clear()
    _addresses[raw] = address
    return address


def sockaddr_of(address: tuple[Any, ...]) -> bytes:
    """A socket address tuple (as a socket reports it) -> raw sockaddr_in / sockaddr_in6."""
    found = _sockaddrs.get(address)
    if found is not None:
        return found
    host = str(address[0])
    port = int(address[1]).to_bytes(2)
    if len(address) == 2:
        raw = _SIN.pack(socket.AF_INET, port, socket.inet_pton(socket.AF_INET, host))
        raw += bytes(8)
    else:
        flow = int(address[2]).to_bytes(4)
        scope = int(address[3])
        if "%" in host:
            host, zone = host.split("%", 1)
            scope = scope or (int(zone) if zone.isdigit() else socket.if_nametoindex(zone))
        ip = socket.inet_pton(socket.AF_INET6, host)
        raw = _SIN6.pack(socket.AF_INET6, port, flow, ip, scope)
    if len(_sockaddrs) >= _CACHE_MAX:
        _sockaddrs.clear()
    _sockaddrs[address] = raw
    return raw


# ---- receiving ---------------------------------------------------------------------------------


class Receiver:
    """`slots` receive slots of `slot_bytes` each, their source addresses and (with `control`)
    their control messages, read by one recvmmsg. Made once, reused by every call; a slot's
    contents are valid until the next `recv`."""

    def __init__(
        self, slots: int = SLOTS, slot_bytes: int = RECV_BYTES, control: bool = False
    ) -> None:
        self.slots = slots
        self.slot_bytes = slot_bytes
        self._data = mmap.mmap(-1, slots * slot_bytes)  # pages appear only when first used
        self.view = memoryview(self._data)
        self.base = _address_of(self._data)
        self._hdrs = bytearray(slots * HDR)
        self._iovs = bytearray(slots * IOV)
        self._names = bytearray(slots * _NAME_STRIDE)
        self._control_bytes = CONTROL_BYTES if control else 0
        self._control = bytearray(max(1, slots * self._control_bytes))
        self._q = memoryview(self._hdrs).cast("Q")
        self._i = memoryview(self._hdrs).cast("I")
        self._hdrs_at = _address_of(self._hdrs)
        iov_q = memoryview(self._iovs).cast("Q")
        iovs_at, names_at = _address_of(self._iovs), _address_of(self._names)
        control_at = _address_of(self._control)
        for i in range(slots):
            iov_q[2 * i] = self.base + i * slot_bytes
            iov_q[2 * i + 1] = slot_bytes
            self._q[i * _QW + _Q_IOV] = iovs_at + i * IOV
            self._q[i * _QW + _Q_IOVLEN] = 1
            self._q[i * _QW + _Q_NAME] = names_at + i * _NAME_STRIDE
            if control:
                self._q[i * _QW + _Q_CONTROL] = control_at + i * self._control_bytes
        self._used = slots  # value-result fields to reset before the next call
        self._last_control = b""
        self._last_local: bytes | None = None

    def recv(self, fd: int, limit: int) -> int:
        """Read up to `limit` datagrams (at least one) from the non-blocking socket `fd`.

        Returns how many; raises BlockingIOError when there is none, OSError as recvfrom would
        (ECONNREFUSED after an ICMP error, ...). A datagram larger than a slot is cut and
        flagged (`truncated`); with 64 KiB slots no UDP datagram is."""
        q, words, ncontrol = self._q, self._i, self._control_bytes
        for i in range(self._used):  # the kernel wrote the actual lengths there
            words[i * _IW + _I_NAMELEN] = NAME_BYTES
            if ncontrol:
                q[i * _QW + _Q_CONTROLLEN] = ncontrol
        limit = min(limit, self.slots)
        got: int = _recvmmsg(fd, self._hdrs_at, limit, 0, None)  # type: ignore[misc]
        if got < 0:
            self._used = 0
            raise _error()
        self._used = got
        return got

    def size(self, i: int) -> int:
        """The length of datagram `i` of the last `recv`."""
        return self._i[i * _IW + _I_LEN]

    def sizes(self, count: int) -> list[int]:
        words = self._i
        return [words[i * _IW + _I_LEN] for i in range(count)]

    def data(self, i: int, n: int) -> memoryview:
        start = i * self.slot_bytes
        return self.view[start : start + n]

    def address(self, i: int) -> int:
        """The memory address of slot `i` (for an iovec that sends it on)."""
        return self.base + i * self.slot_bytes

    def truncated(self, i: int) -> bool:
        return bool(self._i[i * _IW + _I_FLAGS] & MSG_TRUNC)

    def source_raw(self, i: int) -> bytes:
        n = self._i[i * _IW + _I_NAMELEN]
        return bytes(self._names[i * _NAME_STRIDE : i * _NAME_STRIDE + n])

    def source(self, i: int) -> tuple[Any, ...]:
        """Datagram `i`'s source, exactly as recvfrom reports it."""
        n = self._i[i * _IW + _I_NAMELEN]
        raw = bytes(self._names[i * _NAME_STRIDE : i * _NAME_STRIDE + n])
        found = _addresses.get(raw)
        return found if found is not None else address_of(raw)

    def local(self, i: int) -> bytes | None:
        """The raw local address datagram `i` was sent to (IP_PKTINFO / IPV6_PKTINFO), as
        `sockets.destination_of` gives it; None without one."""
        length = self._q[i * _QW + _Q_CONTROLLEN]
        start = i * self._control_bytes
        raw = bytes(self._control[start : start + length])
        if raw == self._last_control:  # mostly the same as the one before
            return self._last_local
        self._last_control = raw
        self._last_local = destination_of(parse_control(raw))
        return self._last_local


_CMSG = struct.Struct("=Qii")  # cmsg_len, cmsg_level, cmsg_type (64-bit Linux)


def parse_control(raw: bytes) -> list[tuple[int, int, bytes]]:
    """Control messages as recvmsg's ancdata: [(level, type, data), ...]."""
    found = []
    offset = 0
    while offset + _CMSG.size <= len(raw):
        length, level, kind = _CMSG.unpack_from(raw, offset)
        if length < _CMSG.size:
            break
        found.append((level, kind, raw[offset + _CMSG.size : offset + length]))
        offset += (length + 7) & ~7
    return found


def pktinfo_control(local: bytes) -> bytes:
    """A control message that makes a datagram leave from `local` (4 or 16 raw bytes)."""
    if len(local) == 4:
        data = struct.pack("=I4s4s", 0, local, bytes(4))
        level, kind = socket.IPPROTO_IP, IP_PKTINFO
    else:
        data = struct.pack("=16sI", local, 0)
        level, kind = socket.IPPROTO_IPV6, IPV6_PKTINFO
    space = socket.CMSG_SPACE(len(data))
    message = _CMSG.pack(socket.CMSG_LEN(len(data)), level, kind) + data
    return message.ljust(space, b"\0")


# ---- sending -----------------------------------------------------------------------------------


class Iovecs:
    """`slots` iovecs, each pointed at a datagram once per batch, shared by every `Messages`
    array built on them."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self._buf = bytearray(slots * IOV)
        self.q = memoryview(self._buf).cast("Q")
        self.at = _address_of(self._buf)

        self.runs: list[tuple[int, int, int]] = []  # of the last `plan`: (first, count, size)
        self.planned = -1  # the count `runs` was planned for; -1: pointed since

    def point(self, i: int, address: int, n: int) -> None:
        self.q[2 * i] = address
        self.q[2 * i + 1] = n
        self.planned = -1

    def plan(self, count: int) -> list[tuple[int, int, int]]:
        """Datagrams 0..count-1 (pointed, none empty) as runs for UDP_SEGMENT: consecutive
        datagrams of one size, the last of a run possibly shorter, within the kernel's limits.
        Planned once per batch, whichever `Messages` asks first."""
        if self.planned == count:
            return self.runs
        q, runs = self.q, self.runs
        runs.clear()
        i = 0
        while i < count:
            size = q[2 * i + 1]
            end = min(count, i + min(UDP_MAX_SEGMENTS, MAX_SEGMENTED_BYTES // max(size, 1)))
            j = i + 1
            while j < end and q[2 * j + 1] == size:
                j += 1
            if j < end and q[2 * j + 1] < size:
                j += 1  # a shorter datagram may end a run
            runs.append((i, j - i, size))
            i = j
        self.planned = count
        return runs


class Messages:
    """An mmsghdr array for sendmmsg: message i sends iovec i of `iovecs`.

    `name`: one destination for every message (raw sockaddr, `sockaddr_of`); or `names=True`:
    one per message (`set_name`); neither: a connected socket. `control=True`: each message may
    carry its own control message (`set_control`, for IP_PKTINFO)."""

    def __init__(
        self,
        iovecs: Iovecs,
        *,
        name: bytes | None = None,
        names: bool = False,
        control: bool = False,
        segment: bool = False,
    ) -> None:
        slots = self.slots = iovecs.slots
        self.iovecs = iovecs  # kept alive: the headers point into it
        self._hdrs = bytearray(slots * HDR)
        self._q = memoryview(self._hdrs).cast("Q")
        self._i = memoryview(self._hdrs).cast("I")
        self.at = _address_of(self._hdrs)
        self._name = bytearray(name or b"\0")
        self._names = bytearray(slots * _NAME_STRIDE if names else 1)
        self._names_at = _address_of(self._names)
        self._controls: dict[bytes, bytes] = {}  # local address -> its control message
        self._control_slots = bytearray(slots * _CONTROL_STRIDE if control else 1)
        self._control_at = _address_of(self._control_slots)
        self.failures: list[tuple[int, int]] = []  # of the last send_all: (index, errno)
        self.last_errno = 0
        self.first = self.tried = 0
        name_at = _address_of(self._name)
        for i in range(slots):
            self._q[i * _QW + _Q_IOV] = iovecs.at + i * IOV
            self._q[i * _QW + _Q_IOVLEN] = 1
            if name is not None:
                self._q[i * _QW + _Q_NAME] = name_at
                self._i[i * _IW + _I_NAMELEN] = len(name)
            elif names:
                self._q[i * _QW + _Q_NAME] = self._names_at + i * _NAME_STRIDE
        # UDP_SEGMENT (one destination or a connected socket): a header per run, each with its
        # own control message
        self.segment = segment and SEGMENT and not names and not control
        self.segment_refused = 0  # the errno that ended segmenting here (0: it did not end)
        self._bytes = -1  # of a send_all that stopped segmenting: bytes sent (-1: none)
        self._runs: list[tuple[int, int, int]] = []  # of the last segmented send_all ...
        self._runs_tried = -1  # ... and how many of them were tried (-1: not segmented)
        if self.segment:
            self._seg_hdrs = bytearray(slots * HDR)
            self._seg_q = memoryview(self._seg_hdrs).cast("Q")
            self._seg_at = _address_of(self._seg_hdrs)
            self._seg_control = bytearray(slots * _SEGMENT_CONTROL)
            self._seg_sizes = memoryview(self._seg_control).cast("H")
            seg_control_at = _address_of(self._seg_control)
            seg_i = memoryview(self._seg_hdrs).cast("I")
            for i in range(slots):
                _CMSG.pack_into(
                    self._seg_control, i * _SEGMENT_CONTROL, socket.CMSG_LEN(2), SOL_UDP,
                    UDP_SEGMENT,
                )  # fmt: skip
                if name is not None:
                    self._seg_q[i * _QW + _Q_NAME] = name_at
                    seg_i[i * _IW + _I_NAMELEN] = len(name)
                self._seg_q[i * _QW + _Q_CONTROL] = seg_control_at + i * _SEGMENT_CONTROL

    def set_name(self, i: int, raw: bytes) -> None:
        start = i * _NAME_STRIDE
        self._names[start : start + len(raw)] = raw
        self._i[i * _IW + _I_NAMELEN] = len(raw)

    def set_control(self, i: int, local: bytes | None) -> None:
        """Message `i` leaves from `local` (IP_PKTINFO), or wherever routing says (None).

        The control message is copied into message i's own slot, so the cache of built ones
        (bytes, no pointers into them) can stay bounded: a host may own many addresses."""
        if local is None:
            self._q[i * _QW + _Q_CONTROL] = 0
            self._q[i * _QW + _Q_CONTROLLEN] = 0
            return
        raw = self._controls.get(local)
        if raw is None:
            if len(self._controls) >= MAX_CONTROLS:
                del self._controls[next(iter(self._controls))]  # the oldest
            raw = self._controls[local] = pktinfo_control(local)
        start = i * _CONTROL_STRIDE
        self._control_slots[start : start + len(raw)] = raw
        self._q[i * _QW + _Q_CONTROL] = self._control_at + start
        self._q[i * _QW + _Q_CONTROLLEN] = len(raw)

    def send(self, fd: int, start: int, count: int) -> int:
        """One sendmmsg of messages start..start+count-1. Returns how many were sent; raises
        OSError (BlockingIOError, ...) only when none was (the kernel's rule)."""
        sent: int = _sendmmsg(fd, self.at + start * HDR, count, 0)  # type: ignore[misc]
        if sent < 0:
            raise _error()
        return sent

    def send_all(self, fd: int, count: int) -> tuple[int, int, int]:
        """Send datagrams 0..count-1: (sent, full, failed), which add up to `count`; segmented
        (UDP_SEGMENT, see the module's docstring) where this array does and it saves calls
        through the stack, one message per datagram otherwise (`send_each`). Segmented,
        `failures` names a failed run by its first datagram (the counts are per datagram)."""
        self._bytes = self._runs_tried = -1
        if not self.segment:
            return self.send_each(fd, count)
        runs = self.iovecs.plan(count)
        if len(runs) == count:  # no two alike: nothing to gain
            return self.send_each(fd, count)
        return self._send_runs(fd, count, runs)

    def _send_runs(
        self, fd: int, count: int, runs: list[tuple[int, int, int]]
    ) -> tuple[int, int, int]:
        q, sizes, iov_at = self._seg_q, self._seg_sizes, self.iovecs.at
        for r, (first, n, size) in enumerate(runs):
            at = r * _QW
            q[at + _Q_IOV] = iov_at + first * IOV
            q[at + _Q_IOVLEN] = n
            q[at + _Q_CONTROLLEN] = _SEGMENT_CONTROL if n > 1 else 0
            sizes[(r * _SEGMENT_CONTROL + _CMSG.size) // 2] = size
        failures = self.failures
        failures.clear()
        self.last_errno = 0
        total = len(runs)
        r = sent = failed = 0
        for _ in range(MAX_CALLS):
            got: int = _sendmmsg(fd, self._seg_at + r * HDR, total - r, 0)  # type: ignore[misc]
            if got > 0:
                for _first, n, _size in runs[r : r + got]:
                    sent += n
                r += got
                if r >= total:
                    break
                continue
            err = _get_errno() if got < 0 else errno.EAGAIN
            self.last_errno = err
            first, n, size = runs[r]
            if n > 1 and err in _SEGMENT_REFUSED:  # the path cannot take it: stop segmenting
                self._refuse(err, size)
                before = self._runs_bytes(runs, r)
                earlier = list(failures)
                more, full, bad = self.send_each(fd, count, first)
                self._bytes = before + self.sent_bytes()
                failures[:0] = earlier
                return sent + more, full, failed + bad
            if err in _FULL or err == errno.ENOBUFS:
                break
            failures.append((first, err))  # the whole run failed with it
            failed += n
            r += 1
            if r >= total:
                break
        self._runs, self._runs_tried = runs, r
        rest = count - sent - failed
        if rest and self.last_errno == errno.ENOBUFS:
            return sent, 0, failed + rest
        return sent, rest, failed

    def _runs_bytes(self, runs: list[tuple[int, int, int]], tried: int) -> int:
        """The bytes of runs 0..tried-1 that went (`failures` names those that did not)."""
        q, failed = self.iovecs.q, {first for first, _ in self.failures}
        return sum(
            q[2 * j + 1]
            for first, n, _size in runs[:tried]
            if first not in failed
            for j in range(first, first + n)
        )

    def _refuse(self, err: int, size: int) -> None:
        self.segment = False
        self.segment_refused = err
        logger.info(
            "UDP_SEGMENT refused towards %s (%s, runs of %d-byte datagrams): one message per "
            "datagram on this socket from now on",
            address_of(bytes(self._name)) if len(self._name) >= 16 else "the connected peer",
            errno.errorcode.get(err, err),
            size,
        )

    def send_each(self, fd: int, count: int, start: int = 0) -> tuple[int, int, int]:
        """Send messages start..count-1, one per datagram: (sent, full, failed), which add up
        to `count - start`.

        A sendmmsg that stops early is continued from where it stopped, at most MAX_CALLS
        calls in all, all non-blocking: a message that fails alone (ECONNREFUSED after an
        ICMP error, EPERM from a firewall, a route gone) is skipped and counted `failed`, with
        its index and errno in `failures` (the message after it is tried next); EAGAIN stops
        there, and what is left is `full` (the link's buffer is full: dropped, never waited
        for); ENOBUFS stops there too and what is left is `failed` (as the plain calls count
        it). `last_errno` is the last errno seen, `tried` how many messages were tried."""
        failures = self.failures
        failures.clear()
        self.first = start
        sent = 0
        self.last_errno = 0
        for _ in range(MAX_CALLS):
            got: int = _sendmmsg(fd, self.at + start * HDR, count - start, 0)  # type: ignore[misc]
            if got > 0:
                sent += got
                start += got
                if start >= count:
                    break
                continue
            err = _get_errno() if got < 0 else errno.EAGAIN
            self.last_errno = err
            if err in _FULL or err == errno.ENOBUFS:
                break
            failures.append((start, err))
            start += 1
            if start >= count:
                break
        self.tried = start
        rest = count - start
        if rest and self.last_errno == errno.ENOBUFS:
            return sent, 0, len(failures) + rest
        return sent, rest, len(failures)

    def sent_bytes(self) -> int:
        """After a `send_all` that did not send everything: the bytes of what it did send."""
        if self._bytes >= 0:
            return self._bytes
        if self._runs_tried >= 0:  # segmented: counted only when asked (rarely: a short send)
            return self._runs_bytes(self._runs, self._runs_tried)
        q = self.iovecs.q
        total = sum(q[2 * i + 1] for i in range(self.first, self.tried))
        return total - sum(q[2 * i + 1] for i, _ in self.failures)
