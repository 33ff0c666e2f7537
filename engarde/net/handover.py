"""Handing the relay over to a new process without losing a datagram (see docs/restart.md).

Every listen socket is bound with SO_REUSEPORT, so a successor (an upgraded engarde, the same
config) binds the same address while its predecessor still serves. Which socket of that
reuseport group gets a datagram is decided by a one-instruction classic BPF program on the
group: "return 0" (the oldest socket) while a successor starts, "return 1" (the successor's
socket) from the moment it is ready. The predecessor then receives nothing new on its listen
socket; it forwards what was already queued there and the replies still arriving on its other
sockets (WireGuard answers the old upstream/uplink sockets until its peer's next datagram moves
it) for GRACE_S, closes its listen socket and exits. The successor, alone in the group again,
steers back to "return 0" for the next one.

The two talk over an abstract unix socket named after the listen address,
"\\0engarde/udp/HOST:PORT" (abstract names belong to the network namespace, like the port). The
process that serves listens there; a process that finds somebody there at start-up is a
successor. Only the same user (or root) is listened to (SO_PEERCRED): the name itself has no
permissions.

    successor                                      predecessor (serving, listening on the name)
    connect to the name, "hello PID" ----------->  "ok" (or "busy": a handover is under way)
    bind the listen socket (SO_REUSEPORT)
    start the relay (the client: uplinks attached)
    steer the group to itself ("return 1")
    "takeover PID" ----------------------------->  close the name, stop the dashboard
                   <-----------------------------  "ok PID"
    listen on the name, log "listening",           forward what is queued and the replies
    systemd: MAINPID=PID, READY=1                  for GRACE_S, close the listen socket, exit 0
    the predecessor's connection closes:
    steer back to "return 0"

`kill -USR2 <pid>` makes the serving process start its successor itself (same executable, same
arguments, same environment: `spawn_successor`); a second `engarde server` started by hand with
the same listen address takes over the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable

import trio

from engarde.config import parse_host_port
from engarde.errors import StartupError
from engarde.net.sockets import open_listen_socket

logger = logging.getLogger(__name__)

GRACE_S = 5.0  # the predecessor's last seconds: queued datagrams and late replies
ANSWER_S = 5.0  # how long either side waits for the other's answer
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: return a constant
_UCRED = struct.Struct("3i")  # pid, uid, gid


class HandoverError(StartupError):
    """A handover cannot start (the message says why); start-up stops with it."""


def control_name(host: str, port: int) -> str:
    """The abstract unix socket name for a listen address."""
    shown = f"[{host}]" if ":" in host else host
    return f"\0engarde/udp/{shown or '*'}:{port}"


def steer(sock: socket.socket, index: int) -> bool:
    """Send every new datagram of `sock`'s reuseport group to the group's `index`-th socket (in
    the order they joined; an index past the end falls back to the kernel's hash, which with one
    socket is that socket). False if the kernel refused (logged)."""
    insn = (ctypes.c_char * 8).from_buffer_copy(struct.pack("=HBBI", _BPF_RET_K, 0, 0, index))
    program = struct.pack("HP", 1, ctypes.addressof(insn))  # struct sock_fprog
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, program)
    except OSError as exc:
        logger.warning("cannot steer the listen socket's group: %s", exc)
        return False
    return True


def _same_user(sock: socket.socket) -> int | None:
    """The peer's pid if it runs as our user or as root, else None."""
    pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, _UCRED.size))
    return pid if uid in (0, os.geteuid()) else None


async def _read_line(sock: trio.socket.SocketType, timeout_s: float | None = ANSWER_S) -> str:
    """One line from `sock` ("" at EOF or after `timeout_s`)."""
    data = b""
    with trio.move_on_after(timeout_s if timeout_s is not None else float("inf")):
        while not data.endswith(b"\n") and len(data) < 256:
            try:
                chunk = await sock.recv(256 - len(data))
            except OSError:
                return ""
            if not chunk:
                return ""
            data += chunk
    return data.decode(errors="replace").strip() if data.endswith(b"\n") else ""


class Handover:
    """This process's side of handovers: as a successor (it found a predecessor serving its
    listen address) and, once it serves, as a predecessor."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.name = ""
        self.shown = ""  # HOST:PORT, for the log
        self.listen: socket.socket | None = None
        self.predecessor_pid: int | None = None
        self.successor_pid: int | None = None  # set when stepping down
        self._predecessor: trio.socket.SocketType | None = None
        self._predecessor_alive = False
        self._successor: trio.socket.SocketType | None = None  # open until we exit
        self._busy = False  # a successor said hello and has not finished
        self._listener: trio.socket.SocketType | None = None
        self._before_step_down: list[Callable[[], Awaitable[None]]] = []
        self._spawned: trio.Process | None = None
        self._stepping_down = trio.Event()

    # ---- start-up --------------------------------------------------------------------------

    async def open_listen_socket(
        self, text: str, *, what: str, pktinfo: bool = False
    ) -> socket.socket:
        """The listen socket, shared (SO_REUSEPORT) with a predecessor if one serves this
        address. Raises SocketSetupError (e.g. a program that is not engarde holds the port)
        or HandoverError (a handover is already under way)."""
        host, port = parse_host_port(text, what=what)
        self.name = control_name(host, port)
        self.shown = self.name[len("\0engarde/udp/") :]
        await self._find_predecessor()
        if self._predecessor is None:
            # Nobody to take over from: a socket without SO_REUSEPORT fails as it always did
            # when anything else holds the address.
            open_listen_socket(text, what=what).close()
        sock = open_listen_socket(text, what=what, pktinfo=pktinfo, reuseport=True)
        if self._predecessor is None:
            steer(sock, 0)  # ours, until a successor is ready
        self.listen = sock
        return sock

    async def _find_predecessor(self) -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.connect(self.name)
        except OSError:
            sock.close()
            return  # nobody serves this address (ECONNREFUSED: nobody listens on the name)
        pid = _same_user(sock)  # type: ignore[arg-type]
        if pid is None:  # not ours to take over from (nor a reason not to start)
            sock.close()
            logger.warning(
                "%r is held by another user's process: no handover from or to it",
                self.name[1:],
            )
            return
        await sock.send(f"hello {os.getpid()}\n".encode())
        answer = await _read_line(sock)
        if answer == "busy":
            sock.close()
            raise HandoverError(
                f"engarde (pid {pid}) is handing over {self.shown} already: try again "
                f"in {GRACE_S:.0f} s"
            )
        if answer != "ok":
            sock.close()
            return  # it went away meanwhile: we start from nothing
        self._predecessor = sock
        self.predecessor_pid = pid
        self._predecessor_alive = True
        logger.info("engarde (pid %d) serves %s: taking over from it", pid, self.shown)

    def before_step_down(self, stop: Callable[[], Awaitable[None]]) -> None:
        """`stop` runs when a successor takes over, before it is told to go ahead (the
        dashboard: its port must be free for the successor's)."""
        self._before_step_down.append(stop)

    async def run(
        self, *, task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Once the relay is up: take over from the predecessor if there is one, then serve the
        control socket until we step down. Reports started (the predecessor's pid or None)
        when this process is the one that receives."""
        if self.listen is None:
            raise RuntimeError("open_listen_socket first")
        async with trio.open_nursery() as nursery:
            if self._predecessor is not None:
                await self._take_over()
                nursery.start_soon(self._watch_predecessor)
            listener = await self._bind_name()
            task_status.started(self.predecessor_pid if self._predecessor else None)
            if listener is not None:
                await self._serve(listener, nursery)

    async def _take_over(self) -> None:
        assert self._predecessor is not None and self.listen is not None
        steer(self.listen, 1)  # from now on the new datagrams are ours
        with contextlib.suppress(OSError):
            await self._predecessor.send(f"takeover {os.getpid()}\n".encode())
        answer = await _read_line(self._predecessor)
        if not answer.startswith("ok"):
            logger.warning(
                "engarde (pid %s) did not answer the takeover (%r): serving anyway",
                self.predecessor_pid, answer,
            )  # fmt: skip

    async def _watch_predecessor(self) -> None:
        """Its connection closes when it exits (its listen socket closed before): alone in
        the group, steer back to the first socket, ours, for the next successor."""
        assert self._predecessor is not None and self.listen is not None
        while True:
            try:
                if not await self._predecessor.recv(256):
                    break
            except OSError:
                break
        self._predecessor.close()
        self._predecessor_alive = False
        steer(self.listen, 0)
        logger.info("engarde (pid %s) exited: handover complete", self.predecessor_pid)

    async def _bind_name(self) -> trio.socket.SocketType | None:
        """Listen on the control name (the predecessor frees it before it answers a takeover;
        a moment's retry covers a slow one). None if it stays taken: no handover from us."""
        with trio.move_on_after(ANSWER_S):
            while True:
                sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    await sock.bind(self.name)
                except OSError as exc:
                    sock.close()
                    if exc.errno != errno.EADDRINUSE:
                        break
                    await trio.sleep(0.05)
                    continue
                sock.listen(4)
                self._listener = sock
                return sock
        logger.warning("%s is taken: this process cannot hand over (restart it to)", self.shown)
        return None

    async def _serve(self, listener: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while not self._stepping_down.is_set():
            try:
                conn, _ = await listener.accept()
            except (OSError, trio.ClosedResourceError):
                return  # closed: we step down
            nursery.start_soon(self._answer, conn)

    async def _answer(self, conn: trio.socket.SocketType) -> None:
        """One process that found us: a successor (hello, then takeover once it is ready)."""
        pid = _same_user(conn)  # type: ignore[arg-type]
        hello = await _read_line(conn)
        if pid is None or not hello.startswith("hello"):
            conn.close()
            return
        if self._busy or self._predecessor_alive or self._stepping_down.is_set():
            await conn.send(b"busy\n")
            conn.close()
            return
        self._busy = True
        try:
            await conn.send(b"ok\n")
            # The successor starts its relay (imports, netlink, uplinks): no deadline here; if
            # it dies, its end closes and we go on serving.
            line = await _read_line(conn, timeout_s=None)
            if not line.startswith("takeover"):
                logger.warning("engarde (pid %d) went away before taking over", pid)
                conn.close()
                return
            await self._step_down(conn, pid)
        finally:
            self._busy = False

    async def _step_down(self, conn: trio.socket.SocketType, pid: int) -> None:
        self.successor_pid = pid
        self._stepping_down.set()
        logger.info(
            "engarde (pid %d) took over: forwarding what is left for %.0f s, then exiting",
            pid, GRACE_S,
        )  # fmt: skip
        if self._listener is not None:
            self._listener.close()  # the name is the successor's now
        for stop in self._before_step_down:
            await stop()
        with contextlib.suppress(OSError):
            await conn.send(f"ok {os.getpid()}\n".encode())
        self._successor = conn  # closes when we exit: the successor then steers back

    async def wait_stepping_down(self) -> None:
        await self._stepping_down.wait()

    # ---- USR2 ------------------------------------------------------------------------------

    async def spawn_successor(self, nursery: trio.Nursery) -> None:
        """Start this program again (same executable, arguments and environment: an upgrade
        installed meanwhile is what starts); it takes over once ready. Logged, never raises."""
        if self._stepping_down.is_set() or self._predecessor_alive:
            logger.warning("SIGUSR2: a handover is under way already; ignored")
            return
        if self._spawned is not None and self._spawned.returncode is None:
            logger.warning(
                "SIGUSR2: the successor (pid %d) is starting; ignored", self._spawned.pid
            )
            return
        argv = [sys.executable, *sys.orig_argv[1:]]
        try:
            proc = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL)
        except OSError as exc:
            logger.warning("SIGUSR2: cannot start %s: %s", argv[0], exc)
            return
        self._spawned = proc
        logger.info("SIGUSR2: started the successor (pid %d): %s", proc.pid, " ".join(argv))
        nursery.start_soon(self._watch_spawned, proc)

    async def _watch_spawned(self, proc: trio.Process) -> None:
        code = await proc.wait()
        if not self._stepping_down.is_set():
            logger.warning(
                "the successor (pid %d) exited with code %d before taking over: still serving",
                proc.pid, code,
            )  # fmt: skip
