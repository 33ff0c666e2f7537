"""Traffic history for the dashboard's plots: a ring buffer of per-second deltas.

Theory of operation: the dashboard's sampler hands `History.add` the cumulative counters of every
link (client) or client address (server) once a period: what it sent and received, and what its
copies were worth (won, late, lost, saved: engarde.web.quality). The history stores what changed
since the previous sample, per key, for the last `capacity` samples; nothing else in engarde
keeps history, and the relay never waits for this. Keys whose counters did not move are left out
of a sample (zero), which keeps a flood of one-shot junk source addresses on the server cheap.

Counters start over when an interface is re-created or a client address comes back; when any
traffic counter of a key went down, all of its traffic counters are taken as a fresh start
(delta = value), and the same for its copy counters.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from engarde.web.views import TOTALS_FIELDS, Totals

DEFAULT_CAPACITY = 300  # samples: five minutes at one per second
_GROUPS = ((0, 4), (4, 8))  # traffic counters, copy counters: each group starts over together


@dataclass(frozen=True, slots=True)
class Sample:
    """What moved during one period ending at uptime ``t`` (seconds), ``dt`` seconds long."""

    seq: int
    t: float
    dt: float
    # per key, in the order of TOTALS_FIELDS: tx bytes, rx bytes, tx dgrams, rx dgrams,
    # copies won, late, lost, saved
    deltas: dict[str, tuple[int, ...]]

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
        deltas: dict[str, tuple[int, ...]] = {}
        for key, now in totals.items():
            delta = _delta(now, previous.get(key))
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
            "fields": list(TOTALS_FIELDS),
            "samples": [s.as_json() for s in self.samples],
        }


def _delta(now: tuple[int, ...], before: tuple[int, ...] | None) -> tuple[int, ...]:
    if before is None or len(before) != len(now):
        return now  # a new link or client address: everything it shows is recent
    out: list[int] = []
    for start, end in _GROUPS:
        group = zip(now[start:end], before[start:end], strict=True)
        pairs = list(group)
        if any(n < b for n, b in pairs):
            out.extend(n for n, _ in pairs)  # started over (they reset together)
        else:
            out.extend(n - b for n, b in pairs)
    return tuple(out)
