"""Traffic history for the dashboard's plots: a ring buffer of per-second deltas.

Theory of operation: the dashboard's sampler hands `History.add` the cumulative counters of every
link (client) or client address (server) once a period: what it sent and received, and what its
copies were worth (won, late, lost, saved: engarde.web.quality). The history stores what changed
since the previous sample, per key, for the last `capacity` samples; nothing else in engarde
keeps history, and the relay never waits for this. Keys whose counters did not move are left out
of a sample (zero).

Bounded by design (a spoofed-source flood on the server must not grow it): the server's keys are
*proven* client addresses only (at most maxClients of them, and an attacker cannot prove one),
and a sample keeps at most `MAX_KEYS` of them (the first ones the caller lists: the most
recently heard); ``keysOmitted`` counts the rest. What unproven addresses sent is one aggregate
per sample (``unproven``: rx bytes, rx datagrams, how many there are), never a series each. So
the history holds at most capacity x MAX_KEYS entries, whatever arrives.

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
MAX_KEYS = 128  # links / proven client addresses per sample
UNPROVEN_FIELDS = ("rxBytes", "rxDatagrams", "addresses")
Unproven = tuple[int, int, int]
"""Server: cumulative rx bytes and datagrams of all unproven addresses, and how many there are."""
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
    keys_omitted: int = 0  # keys that moved but did not fit in MAX_KEYS
    unproven: Unproven | None = None  # server: rx bytes, rx datagrams (deltas), addresses now

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seq": self.seq,
            "t": round(self.t, 3),
            "dt": round(self.dt, 3),
            "links": {key: list(value) for key, value in self.deltas.items()},
        }
        if self.keys_omitted:
            out["keysOmitted"] = self.keys_omitted
        if self.unproven is not None:
            out["unproven"] = list(self.unproven)
        return out

    def rates(self) -> dict[str, tuple[float, float]]:
        """Per key: (tx, rx) bytes per second over this sample."""
        if self.dt <= 0:
            return {}
        return {key: (d[0] / self.dt, d[1] / self.dt) for key, d in self.deltas.items()}


class History:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, max_keys: int = MAX_KEYS) -> None:
        self.capacity = capacity
        self.max_keys = max_keys
        self.samples: deque[Sample] = deque(maxlen=capacity)
        self._totals: Totals = {}
        self._unproven: Unproven | None = None
        self._last_t: float | None = None
        self._seq = 0

    def add(self, t: float, totals: Totals, unproven: Unproven | None = None) -> Sample | None:
        """Record the counters as of uptime ``t`` (``unproven``: the server's aggregate of its
        unproven addresses). The first call only sets the baseline (returns None): counters
        from before the dashboard started are not a rate."""
        previous, last_t = self._totals, self._last_t
        before_unproven = self._unproven
        self._totals, self._last_t, self._unproven = dict(totals), t, unproven
        if last_t is None:
            return None
        deltas: dict[str, tuple[int, ...]] = {}
        omitted = 0
        for key, now in totals.items():
            delta = _delta(now, previous.get(key))
            if any(delta):
                if len(deltas) < self.max_keys:
                    deltas[key] = delta
                else:
                    omitted += 1
        moved: Unproven | None = None
        if unproven is not None:
            rx_bytes, rx_datagrams, count = unproven
            if before_unproven is not None and rx_datagrams >= before_unproven[1]:
                rx_bytes -= before_unproven[0]
                rx_datagrams -= before_unproven[1]
            moved = (rx_bytes, rx_datagrams, count)
        self._seq += 1
        sample = Sample(self._seq, t, max(0.0, t - last_t), deltas, omitted, moved)
        self.samples.append(sample)
        return sample

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def as_json(self, period_s: float) -> dict[str, Any]:
        return {
            "periodSeconds": period_s,
            "capacity": self.capacity,
            "maxKeys": self.max_keys,
            "unprovenFields": list(UNPROVEN_FIELDS),
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
