"""The relay's own added delay: what it measured, kept small and readable.

Theory of operation: the pump (engarde.net.latency) samples one datagram every few milliseconds
per hot socket and reports how long it waited between the kernel's receive timestamp and the
relay handling it. `DelayRecorder` keeps those samples three ways:

- a histogram over fixed bounds (`BOUNDS_S`) since start, with the exact sum and the maximum:
  what /metrics exposes (`engarde_relay_delay_seconds`);
- the last `RECENT_SAMPLES` samples, for p50/p99 "now" in /api/v2/status;
- the stalls (a sample above `STALL_S`) with what the control plane was doing then, as the
  sampler could tell cheaply: the worst of the last `RECENT_S` seconds is shown.

It decides nothing and reads no clock: callers pass `now` (monotonic seconds). Written by the
pump thread only; readers (the dashboard) copy the containers in one C-level step.
"""

from __future__ import annotations

import bisect
import collections
import math
from dataclasses import dataclass
from typing import Any

# Upper bounds of the histogram's buckets (seconds); one more bucket counts what lies beyond.
BOUNDS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
STALL_S = 0.002  # a sample above this is a stall worth explaining
RECENT_SAMPLES = 2048  # p50/p99 over these (~20 s at one sample per 10 ms)
RECENT_S = 300.0  # the worst stall shown is the worst of this long
STALLS_KEPT = 64
LAST_STALLS_SHOWN = 5
IMPLAUSIBLE_S = 60.0  # a "delay" beyond this is a clock step, not a delay: not recorded


@dataclass(frozen=True, slots=True)
class Stall:
    """One sample above STALL_S and what was going on meanwhile."""

    at: float  # monotonic seconds, when it was measured
    delay_s: float
    socket: str  # which hot socket the datagram waited on
    doing: str  # what the control plane was doing (a GC pass, a function of the trio thread)
    cpu_wait_s: float | None = None  # the pump thread runnable but not running (other work)
    blocked_s: float | None = None  # the pump thread neither running nor runnable (GIL, ...)

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "agoS": round(max(0.0, now - self.at), 1),
            "delayMs": _ms(self.delay_s),
            "socket": self.socket,
            "doing": self.doing,
            "cpuWaitMs": None if self.cpu_wait_s is None else _ms(self.cpu_wait_s),
            "blockedMs": None if self.blocked_s is None else _ms(self.blocked_s),
        }


class DelayRecorder:
    """Samples of the relay's added delay (seconds). See the module docstring."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS_S) + 1)
        self.samples = 0
        self.sum_s = 0.0
        self.max_s = 0.0
        self.implausible = 0
        self.max_blocked_s = 0.0  # the longest blocked time of an explained stall, since start
        self.most_blocked: Stall | None = None  # ... and that stall
        self.recent: collections.deque[float] = collections.deque(maxlen=RECENT_SAMPLES)
        self.stalls: collections.deque[Stall] = collections.deque(maxlen=STALLS_KEPT)

    def add(self, delay_s: float) -> bool:
        """Record one sample; True if it is a stall (the caller may explain it, `add_stall`).
        A negative delay (the clock moved back a little) counts as 0; an implausible one
        (clock step) is only counted."""
        if delay_s < 0.0:
            delay_s = 0.0
        elif delay_s > IMPLAUSIBLE_S or math.isnan(delay_s):
            self.implausible += 1
            return False
        self.counts[bisect.bisect_left(BOUNDS_S, delay_s)] += 1
        self.samples += 1
        self.sum_s += delay_s
        if delay_s > self.max_s:
            self.max_s = delay_s
        self.recent.append(delay_s)
        return delay_s > STALL_S

    def add_stall(self, stall: Stall) -> None:
        self.stalls.append(stall)
        if stall.blocked_s is not None and stall.blocked_s > self.max_blocked_s:
            self.max_blocked_s = stall.blocked_s
            self.most_blocked = stall

    def worst_recent(self, now: float) -> Stall | None:
        stalls = [s for s in list(self.stalls) if now - s.at <= RECENT_S]
        return max(stalls, key=lambda s: s.delay_s, default=None)

    def buckets(self) -> list[tuple[float, int]]:
        """Cumulative counts per upper bound, ending with (inf, samples): Prometheus' shape."""
        return cumulative(list(BOUNDS_S), list(self.counts))

    def as_json(self, now: float) -> dict[str, Any]:
        """The /api/v2/status view: milliseconds, None where nothing was measured yet."""
        recent = sorted(self.recent)
        worst = self.worst_recent(now)
        most_blocked = self.most_blocked
        return {
            "samples": self.samples,
            "p50Ms": _ms(quantile(recent, 0.5)) if recent else None,
            "p99Ms": _ms(quantile(recent, 0.99)) if recent else None,
            "recentMaxMs": _ms(recent[-1]) if recent else None,
            "maxMs": _ms(self.max_s) if self.samples else None,
            "stalls": len(self.stalls),
            "maxBlockedMs": _ms(self.max_blocked_s),
            "mostBlockedStall": None if most_blocked is None else most_blocked.as_json(now),
            "worstRecentStall": None if worst is None else worst.as_json(now),
            "lastStalls": [s.as_json(now) for s in list(self.stalls)[-LAST_STALLS_SHOWN:]],
            "histogram": {  # since start; per bucket, the last one beyond the last bound
                "boundsS": list(BOUNDS_S),
                "counts": list(self.counts),
                "sumS": self.sum_s,
            },
        }


def cumulative(bounds: list[float], counts: list[int]) -> list[tuple[float, int]]:
    """Per-bucket counts (one more than bounds) -> cumulative ones per upper bound, ending with
    (inf, total)."""
    out = []
    running = 0
    for bound, n in zip((*bounds, math.inf), counts, strict=True):
        running += n
        out.append((bound, running))
    return out


def quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted, non-empty list."""
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
