"""Traffic history for the dashboard's plots: a ring buffer of per-second deltas.

Theory of operation: the dashboard's sampler hands `History.add` the cumulative counters of every
link (client) or client address (server) once a period. The history stores what changed since
the previous sample, per key, for the last `capacity` samples; nothing else in engarde keeps
history, and the relay never waits for this. Keys whose counters did not move are left out of a
sample (zero), which keeps a flood of one-shot junk source addresses on the server cheap.

Counters start over when an interface is re-created or a client address comes back; when any
counter of a key went down, all of its counters are taken as a fresh start (delta = value).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from engarde.web.views import Totals

DEFAULT_CAPACITY = 300  # samples: five minutes at one per second


@dataclass(frozen=True, slots=True)
class Sample:
    """What moved during one period ending at uptime ``t`` (seconds), ``dt`` seconds long."""

    seq: int
    t: float
    dt: float
    deltas: dict[str, tuple[int, int, int, int]]  # (tx bytes, rx bytes, tx dgrams, rx dgrams)

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "t": round(self.t, 3),
            "dt": round(self.dt, 3),
            "links": {key: list(value) for key, value in self.deltas.items()},
        }

    def rates(self) -> dict[str, tuple[float, float]]:
        """Per key: (tx, rx) bytes per second over this sample."""
        if self.dt <= 0:
            return {}
        return {key: (d[0] / self.dt, d[1] / self.dt) for key, d in self.deltas.items()}


class History:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self.samples: deque[Sample] = deque(maxlen=capacity)
        self._totals: Totals = {}
        self._last_t: float | None = None
        self._seq = 0

    def add(self, t: float, totals: Totals) -> Sample | None:
        """Record the counters as of uptime ``t``. The first call only sets the baseline
        (returns None): counters from before the dashboard started are not a rate."""
        previous, last_t = self._totals, self._last_t
        self._totals, self._last_t = dict(totals), t
        if last_t is None:
            return None
        deltas: dict[str, tuple[int, int, int, int]] = {}
        for key, now in totals.items():
            before = previous.get(key)
            if before is None or any(n < b for n, b in zip(now, before, strict=True)):
                # A new link or client address, or its counters started over (they reset
                # together): everything they show is recent.
                delta = now
            else:
                delta = (
                    now[0] - before[0],
                    now[1] - before[1],
                    now[2] - before[2],
                    now[3] - before[3],
                )
            if any(delta):
                deltas[key] = delta
        self._seq += 1
        sample = Sample(self._seq, t, max(0.0, t - last_t), deltas)
        self.samples.append(sample)
        return sample

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def as_json(self, period_s: float) -> dict[str, Any]:
        return {
            "periodSeconds": period_s,
            "capacity": self.capacity,
            "fields": ["txBytes", "rxBytes", "txDatagrams", "rxDatagrams"],
            "samples": [s.as_json() for s in self.samples],
        }
