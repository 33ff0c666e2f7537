"""Processes the benchmarks start inside the lab's namespaces, and what /proc says about them.

Every long-running process is started with :meth:`lab.Lab.popen`, so the lab stops it by PID on
close even if the bench fails half-way; :meth:`Tool.finish` stops it earlier and parses the one
JSON line the C tools print when they get SIGTERM.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from typing import Any

from lab import Lab, LabError

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark process did not start, died, or printed something unexpected."""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/PID/stat, in seconds.

    Raises BenchError if the process is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise BenchError(f"process {pid} is gone") from exc
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def cpu_seconds_exact(pid: int) -> float:
    """On-CPU time of a process in seconds, exact: the sum over its live threads of the
    scheduler's sum_exec_runtime (/proc/PID/task/*/schedstat, ns).

    utime+stime (:func:`cpu_seconds`) are scaled by the kernel to the same runtime, but reported
    in 10 ms ticks; this has ns resolution. Threads that exited are missing here (they are in
    utime+stime): the bench records both. Raises BenchError if the process is gone.
    """
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError as exc:
        raise BenchError(f"process {pid} is gone") from exc
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread just exited
    return total / 1e9


def process_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (exited, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB from /proc/PID/status. Raises BenchError if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise BenchError(f"process {pid} is gone") from exc
    raise BenchError(f"process {pid} has no VmRSS (a zombie?)")


def parse_json_line(text: str, what: str) -> dict[str, Any]:
    """The last line of ``text`` that is a JSON object; BenchError if there is none."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise BenchError(f"{what}: no JSON result in its output: {text[-500:]!r}")


class Tool:
    """A C tool running in a namespace: waits for its ready line, stops it, returns its JSON."""

    def __init__(self, lab: Lab, ns: str, argv: list[str], name: str) -> None:
        self.lab = lab
        self.name = name
        self.argv = argv
        self.stderr_text = ""
        self.proc = lab.popen(ns, *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, marker: str, timeout_s: float = 5.0) -> None:
        """Wait until ``marker`` appears on the tool's stderr; BenchError on exit or timeout."""
        if self.proc.stderr is None:
            raise BenchError(f"{self.name}: started without a stderr pipe")
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stderr.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while marker not in self.stderr_text:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"{self.name}: not ready after {timeout_s} s: "
                                     f"{self.stderr_text[-500:]!r}")
                if sel.select(left):
                    chunk = os.read(fd, 4096)
                    if not chunk:
                        self.proc.wait()
                        raise BenchError(f"{self.name} exited with code {self.proc.returncode}: "
                                         f"{self.stderr_text[-500:]!r}")
                    self.stderr_text += chunk.decode(errors="replace")

    def finish(self) -> dict[str, Any]:
        """Stop the tool (SIGTERM, SIGKILL after 3 s) and return the JSON it printed."""
        running = self.alive()
        self.lab.stop(self.proc)
        out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        self.stderr_text += err
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        if not running and self.proc.returncode != 0:
            raise BenchError(f"{self.name} died with code {self.proc.returncode}: "
                             f"{self.stderr_text[-500:]!r}")
        return parse_json_line(out, self.name)

    def kill(self) -> None:
        """Stop without reading a result (cleanup paths)."""
        self.lab.stop(self.proc)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def run_tool(lab: Lab, ns: str, argv: list[str], name: str, timeout_s: float) -> dict[str, Any]:
    """Run a C tool to completion in ``ns`` and return its JSON; BenchError on failure."""
    try:
        proc = lab.run(ns, *argv, timeout_s=timeout_s)
    except LabError as exc:
        raise BenchError(f"{name}: {exc}") from exc
    return parse_json_line(proc.stdout, name)


def _steal_ticks() -> float:
    """Steal time of all CPUs from /proc/stat: a VM's CPU taken by the hypervisor."""
    with open("/proc/stat", encoding="ascii") as f:
        return float(f.readline().split()[8])


def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:7])  # without steal (time we did not get) and guest (inside user)
    return total - idle, total


def busy_cores(seconds: float = 1.0) -> float:
    """How many CPUs' worth of time the machine spent busy during the next ``seconds``.

    Called while the bench itself runs nothing, this is what other work on the machine uses:
    the figures of a bench that shares its 2 CPUs with a test suite are not worth much.
    """
    busy0, total0 = _cpu_times()
    time.sleep(seconds)
    busy1, total1 = _cpu_times()
    ncpu = os.cpu_count() or 1
    return (busy1 - busy0) / (total1 - total0) * ncpu if total1 > total0 else 0.0


def _scan_processes() -> dict[int, tuple[int, int, int, int]]:
    """pid -> (ppid, starttime, own CPU ticks, flags) for every process readable now."""
    procs: dict[int, tuple[int, int, int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue  # exited while we looked
        fields = stat[stat.rindex(")") + 2 :].split()
        # proc(5) fields 4 ppid, 9 flags, 14-15 utime stime, 22 starttime. Not cutime/cstime:
        # a parent reaping a long-lived child would add CPU spent long before the window.
        ticks = int(fields[11]) + int(fields[12])
        procs[int(entry.name)] = (int(fields[1]), int(fields[19]), ticks, int(fields[6]))
    return procs


PF_KTHREAD = 0x00200000


class ForeignCpu:
    """CPU time used by processes that are not this bench or its descendants.

    ``start()`` then ``cores()`` gives the average number of CPUs other work used in between: a
    lower bound (processes born and gone in between are missed), good enough to flag a busy
    machine. Kernel threads are left out: softirq work there is mostly the bench's own.
    """

    def __init__(self) -> None:
        self._t0 = 0.0
        self._base: dict[tuple[int, int], int] = {}
        self._steal0 = 0.0

    def _foreign(self) -> dict[tuple[int, int], int]:
        procs = _scan_processes()
        me = os.getpid()
        ours: dict[int, bool] = {}

        def is_ours(pid: int) -> bool:
            chain = []
            while pid not in ours:
                if pid == me:
                    ours[pid] = True
                    break
                info = procs.get(pid)
                if info is None or pid <= 1:
                    ours[pid] = False
                    break
                chain.append(pid)
                pid = info[0]
            verdict = ours[pid]
            for p in chain:
                ours[p] = verdict
            return verdict

        return {(pid, start): ticks for pid, (_, start, ticks, flags) in procs.items()
                if not flags & PF_KTHREAD and not is_ours(pid)}

    def start(self) -> None:
        self._base = self._foreign()
        self._steal0 = _steal_ticks()
        self._t0 = time.monotonic()

    def steal(self) -> float:
        """CPUs' worth of time the hypervisor gave to other guests since ``start()``."""
        elapsed = time.monotonic() - self._t0
        return (_steal_ticks() - self._steal0) / CLK_TCK / elapsed if elapsed > 0 else 0.0

    def cores(self) -> float:
        now = self._foreign()
        elapsed = time.monotonic() - self._t0
        used = sum(ticks - self._base.get(key, 0) for key, ticks in now.items())
        cores = used / CLK_TCK / elapsed if elapsed > 0 else 0.0
        return min(cores, float(os.cpu_count() or 1))
