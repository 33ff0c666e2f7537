"""The dashboard's state: the core it looks at, the traffic history, the checkpoints of the
links' copy counters (for "the last minute") and the live event stream.

Theory of operation: `Dashboard` is the only object of the web side that talks to the core. It
reads with ``core.snapshot(clock())`` and changes state with the core's exclusion commands;
nothing else (no sockets, no relay internals). Once a period `run_sampler` takes one snapshot,
adds a history sample and a quality checkpoint (engarde.web.quality) and publishes one
ready-serialised server-sent event to every open page, so the cost of a tick does not grow with
the number of pages, and a page costs the relay one socket write per second. An exclusion
command publishes an extra event at once, so the page shows the change without waiting for the
next tick.

`Broadcast` keeps only the latest event: a page that falls behind skips to the newest status
(each event carries the whole status) instead of queueing memory in the daemon.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from engarde import __version__
from engarde.config import WebManagerConfig
from engarde.core.client import ClientCore
from engarde.core.server import ServerCore
from engarde.diagnostics import process_stats
from engarde.web import views
from engarde.web.history import DEFAULT_CAPACITY, History, Sample
from engarde.web.quality import QualityWindow

logger = logging.getLogger(__name__)

Core = ClientCore | ServerCore
Clock = Callable[[], float]


class ReloadOutcome(Protocol):
    """What a reload answers (engarde.net.reload.ReloadResult)."""

    ok: bool

    def as_json(self) -> dict[str, Any]: ...


Reload = Callable[[bool], Awaitable[ReloadOutcome]]
"""Re-read the config file and apply it (argument True: only say what would change)."""

PERIOD_S = 1.0
MAX_STREAMS = 32  # open event streams (pages) in all; more get 503
MAX_STREAMS_PER_ADDRESS = 4  # open event streams from one client address; more get 503
PENDING_SHOWN = 64  # server role: unproven addresses described per snapshot (API, /metrics)
STREAM_CLIENTS_SHOWN = 128  # server role: proven client addresses per event (the API has all)
STREAM_PENDING_SHOWN = 32  # server role: unproven addresses per event
RETRY_MS = 2000  # EventSource reconnect delay after a lost connection


class Broadcast:
    """Latest-value broadcast of serialised events to any number of waiting streams."""

    def __init__(self) -> None:
        self.seq = 0
        self.closed = False
        self._latest = ""
        self._changed = trio.Event()

    def publish(self, message: str) -> None:
        self.seq += 1
        self._latest = message
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def close(self) -> None:
        """End every stream (shutdown): waiters get None."""
        self.closed = True
        self._changed.set()

    async def next(self, seen: int) -> tuple[int, str] | None:
        """The newest event after sequence number ``seen``, waiting if there is none yet."""
        while self.seq == seen and not self.closed:
            await self._changed.wait()
        if self.closed:
            return None
        return self.seq, self._latest


class Dashboard:
    def __init__(
        self,
        core: Core,
        *,
        clock: Clock,
        period_s: float = PERIOD_S,
        history_capacity: int = DEFAULT_CAPACITY,
        web: WebManagerConfig | None = None,
        reload: Reload | None = None,
    ) -> None:
        if not isinstance(core, ClientCore | ServerCore):
            raise TypeError(f"expected a ClientCore or ServerCore, got {type(core).__name__}")
        self.core = core
        self.clock = clock
        self.web = web  # the credentials in force (a reload may change them)
        self.reload = reload
        self.role = "client" if isinstance(core, ClientCore) else "server"
        self.version = __version__
        self.period_s = period_s
        self.history = History(history_capacity)
        self.quality = QualityWindow()  # where "the last minute" of each link's copies starts
        self.broadcast = Broadcast()
        self.open_streams = 0
        self.streams_by_address: dict[str, int] = {}  # open event streams per client address
        self.sample_seconds = 0.0  # what the latest tick cost (wall clock), and the worst one
        self.sample_seconds_max = 0.0

    @property
    def client(self) -> ClientCore | None:
        return self.core if isinstance(self.core, ClientCore) else None

    # ---- reads -----------------------------------------------------------------------------

    def snapshot(self, pending_shown: int = PENDING_SHOWN) -> dict[str, Any]:
        """The core's snapshot; on the server at most ``pending_shown`` unproven addresses are
        described (a spoofed-source flood must not make every request and tick cost more)."""
        if isinstance(self.core, ServerCore):
            return self.core.snapshot(self.clock(), pending_shown=pending_shown)
        return self.core.snapshot(self.clock())

    def get_list(self, snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
        """The v1 document."""
        snap = snapshot if snapshot is not None else self.snapshot()
        if self.role == "client":
            return views.client_get_list(snap, self.version)
        return views.server_get_list(snap, self.version)

    def status(self, snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
        """The v2 document, with the rates of the latest history sample and the links' copy
        figures over the last minute."""
        snap = snapshot if snapshot is not None else self.snapshot()
        latest = self.history.latest()
        rates = latest.rates() if latest is not None else {}
        baseline = self.quality.baseline(snap["uptime"])
        if self.role == "client":
            doc = views.client_status(snap, self.version, rates, baseline)
        else:
            doc = views.server_status(snap, self.version, rates, baseline)
        doc["process"] = process_stats()  # tasks, open fds, RSS: leaks show here first
        doc["dashboard"] = {  # its own cost and size: bounded whatever arrives (docs/web.md)
            "sampleSeconds": round(self.sample_seconds, 6),
            "sampleSecondsMax": round(self.sample_seconds_max, 6),
            "historyEntries": sum(len(s.deltas) for s in self.history.samples),
            "openStreams": self.open_streams,
        }
        doc["latency"] = snap["latency"]  # the relay's added delay (engarde.core.latency)
        return doc

    # ---- commands (client) -------------------------------------------------------------------

    def exclude(self, name: str) -> str:
        return self._command(lambda core, now: core.exclude(name, now))

    def include(self, name: str) -> str:
        return self._command(lambda core, now: core.include(name, now))

    def swap_exclusion(self, name: str) -> str:
        return self._command(lambda core, now: core.swap_exclusion(name, now))

    def reset_exclusions(self) -> str:
        return self._command(lambda core, now: core.reset_exclusions(now))

    def _command(self, action: Callable[[ClientCore, float], str]) -> str:
        """Run one exclusion command; raises UnknownInterface, or RoleError on the server."""
        core = self.client
        if core is None:
            raise RoleError("exclusions exist only on the client")
        answer = action(core, self.clock())
        self.publish()  # the page shows the change now, not at the next tick
        return answer

    # ---- the live stream ---------------------------------------------------------------------

    def sample(self) -> Sample | None:
        """One tick: snapshot, history sample, event to every page."""
        started = time.perf_counter()
        snap = self.snapshot(STREAM_PENDING_SHOWN)
        sample = self.history.add(
            snap["uptime"], views.traffic_totals(snap), views.unproven_totals(snap)
        )
        self.quality.add(snap["uptime"], views.quality_totals(snap))
        self.publish(snap, sample)
        self.sample_seconds = time.perf_counter() - started
        self.sample_seconds_max = max(self.sample_seconds_max, self.sample_seconds)
        return sample

    def publish(self, snapshot: dict[str, Any] | None = None, sample: Sample | None = None) -> None:
        status = self._stream_status(self.status(snapshot))
        data = {"status": status, "sample": None if sample is None else sample.as_json()}
        self.broadcast.publish(sse("update", data))

    def first_event(self) -> str:
        """What a page gets when it connects: the status and the whole history."""
        data = {
            "status": self._stream_status(self.status(self.snapshot(STREAM_PENDING_SHOWN))),
            "history": self.history.as_json(self.period_s),
        }
        return f"retry: {RETRY_MS}\n" + sse("snapshot", data)

    def _stream_status(self, status: dict[str, Any]) -> dict[str, Any]:
        if status["type"] != "server":
            return status
        return cap_server_status(status, STREAM_CLIENTS_SHOWN, STREAM_PENDING_SHOWN)

    def close(self) -> None:
        self.broadcast.close()


def cap_server_status(status: dict[str, Any], addresses: int, pending: int) -> dict[str, Any]:
    """The server's v2 status with at most ``addresses`` proven addresses and ``pending``
    unproven ones, for the event stream (a page need not carry a flood's worth of entries).

    The most recently heard clients keep all their addresses; a client is shown whole or, when
    it alone has more than is left, with its most recently heard addresses. Clients keep their
    order (the page does not reshuffle). ``clientsOmitted``, ``pendingOmitted`` and a client's
    ``addressesOmitted`` say what was left out.
    """
    groups: list[dict[str, Any]] = status["clients"]
    waiting: list[dict[str, Any]] = status["pending"]
    if sum(len(g["addresses"]) for g in groups) <= addresses and len(waiting) <= pending:
        return status  # (pendingOmitted, if any, is already in the status)
    budget = addresses
    shown: dict[int, dict[str, Any]] = {}
    for position in sorted(range(len(groups)), key=lambda i: _age_key(groups[i])):
        if budget <= 0:
            break
        group = groups[position]
        listed = group["addresses"]
        if len(listed) > budget:
            newest = {id(a) for a in sorted(listed, key=_age_key)[:budget]}
            kept = [a for a in listed if id(a) in newest]
            group = dict(group, addresses=kept, addressesOmitted=len(listed) - len(kept))
        budget -= len(group["addresses"])
        shown[position] = group
    capped = dict(status)
    capped["clients"] = [shown[i] for i in sorted(shown)]
    capped["clientsOmitted"] = len(groups) - len(shown)
    capped["pending"] = waiting[:pending]  # most recently heard first
    capped["pendingOmitted"] = status.get("pendingOmitted", 0) + max(0, len(waiting) - pending)
    return capped


def _age_key(item: dict[str, Any]) -> float:
    age = item["lastReceivedAge"]
    return math.inf if age is None else float(age)


class RoleError(Exception):
    """A client-only command reached the server's dashboard."""


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event; the JSON is on one line (json.dumps never emits a newline)."""
    body = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"event: {event}\ndata: {body}\n\n"


async def run_sampler(dashboard: Dashboard) -> None:
    """Take a sample every period until cancelled, on a fixed grid (no drift)."""
    period = dashboard.period_s
    next_at = trio.current_time()
    while True:
        dashboard.sample()
        next_at += period
        now = trio.current_time()
        if next_at < now:  # fell behind (a busy process): skip ticks rather than burst
            next_at = now + period - math.fmod(now - next_at, period)
        await trio.sleep_until(next_at)
