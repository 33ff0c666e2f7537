"""What each link is worth, for the dashboard: last-minute figures from cumulative counters. Pure.

Theory of operation: the core measures every link on its receiving side (engarde.core.copies:
the client per uplink, the server per client address) with counters that only grow while the
link exists: copies ``won`` (first to arrive), ``late`` (exact copies after another link's),
``lost`` (delivered by another link, never by this one), ``saved`` (delivered by this link
only: the tunnel would have lost it without it), and a histogram of how far behind the first
copy the late ones came. The core keeps no per-minute figures; this module derives them.

`QualityWindow` keeps a checkpoint of every link's cumulative counters every `CHECKPOINT_S`
(fed by the dashboard's once-a-second sampler) and only as many as the last minute needs, so
"the last minute" is the difference between the newest counters and the checkpoint about
`WINDOW_S` older: 60 to 65 s of history (`lastMinute.seconds` says how long exactly); before
that much history exists, everything since the first sample. Checkpoints store only links
that ever moved, and reuse the previous checkpoint's object when a link did not move, so a
server with many idle (or spoofed, never-measured) addresses costs next to nothing.

A link whose counters went down started over (an interface re-created, a client address that
came back): what it shows is taken as recent.

`link_quality` turns one link's snapshot ``quality`` and its checkpoint into the v2 document
(engarde.web.views puts it under each link / client address); `add_shares` fills in each link's
share of first arrivals among the links of one tunnel.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engarde.core.copies import lag_quantile_s

JSON = dict[str, Any]

WINDOW_S = 60.0  # "the last minute"
CHECKPOINT_S = 5.0  # how often cumulative counters are kept (the window's granularity)
IDLE_FOR_S = 3600.0  # carried copies this long and saved nothing this long: the one to drop
_SLACK_S = 0.25  # sampler jitter: a checkpoint 59.9 s old counts as a minute old


@dataclass(frozen=True, slots=True)
class Counts:
    """Cumulative (or, from `since`, differences of) one link's copy counters."""

    won: int = 0
    late: int = 0
    lost: int = 0
    saved: int = 0
    lag: tuple[int, ...] = ()  # lag histogram buckets (engarde.core.copies.LAG_BOUNDS_S)

    @classmethod
    def of(cls, quality: Mapping[str, Any]) -> Counts:
        """From a snapshot's ``quality`` (engarde.core.copies.LinkQuality.as_dict)."""
        return cls(
            quality["won"],
            quality["late"],
            quality["lost"],
            quality["saved"],
            tuple(quality["lag_buckets"]),
        )

    @property
    def moved(self) -> bool:
        return bool(self.won or self.late or self.lost or self.saved)

    def since(self, older: Counts | None) -> Counts:
        """What happened after ``older`` (None: since the start). When any counter went down,
        the link started over: all it shows is recent."""
        if older is None or not older.moved:
            return self
        if (
            self.won < older.won
            or self.late < older.late
            or self.lost < older.lost
            or self.saved < older.saved
            or len(self.lag) != len(older.lag)
            or any(n < o for n, o in zip(self.lag, older.lag, strict=True))
        ):
            return self
        return Counts(
            self.won - older.won,
            self.late - older.late,
            self.lost - older.lost,
            self.saved - older.saved,
            tuple(n - o for n, o in zip(self.lag, older.lag, strict=True)),
        )


@dataclass(frozen=True, slots=True)
class Baseline:
    """The checkpoint "the last minute" starts from: per link key, its counters then (a key
    that is missing had counted nothing), and how many seconds ago that was."""

    seconds: float
    counts: Mapping[str, Counts]

    def get(self, key: str) -> Counts | None:
        return self.counts.get(key)


def since_start(uptime: float) -> Baseline:
    """No checkpoint yet (nothing sampled): the last minute is everything so far."""
    return Baseline(max(0.0, uptime), {})


class QualityWindow:
    """Checkpoints of every link's cumulative counters, enough of them for the last minute."""

    def __init__(self, window_s: float = WINDOW_S, checkpoint_s: float = CHECKPOINT_S) -> None:
        self.window_s = window_s
        self.checkpoint_s = checkpoint_s
        self._checkpoints: deque[tuple[float, dict[str, Counts]]] = deque()

    def add(self, t: float, counts: Mapping[str, Counts]) -> None:
        """The cumulative counters at uptime ``t`` (once per sample; a checkpoint is kept only
        every `checkpoint_s`)."""
        points = self._checkpoints
        if points and t - points[-1][0] < self.checkpoint_s - _SLACK_S:
            return
        previous = points[-1][1] if points else {}
        kept: dict[str, Counts] = {}
        for key, now in counts.items():
            if not now.moved:
                continue
            before = previous.get(key)
            kept[key] = before if before == now else now  # an idle link: share the object
        points.append((t, kept))
        # Keep the newest checkpoint that is a window old (the baseline) and the ones after it.
        while len(points) > 1 and points[1][0] <= t - self.window_s + _SLACK_S:
            points.popleft()

    def baseline(self, t: float) -> Baseline:
        """Where the last minute starts, as of uptime ``t``."""
        if not self._checkpoints:
            return since_start(t)
        at, counts = self._checkpoints[0]
        return Baseline(max(0.0, t - at), counts)

    @property
    def checkpoints(self) -> int:
        return len(self._checkpoints)


def cumulative(qualities: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Counts]:
    """Per key, the counters of a snapshot's ``quality`` dicts (links that never moved are left
    out: they cost nothing to keep)."""
    out: dict[str, Counts] = {}
    for key, quality in qualities:
        if quality["won"] or quality["late"] or quality["lost"] or quality["saved"]:
            out[key] = Counts.of(quality)
    return out


def link_quality(quality: Mapping[str, Any], baseline: Baseline, key: str) -> JSON:
    """The v2 ``quality`` of one link from its snapshot ``quality`` (cumulative) and the
    checkpoint the last minute starts from. ``firstSharePct`` is filled in by `add_shares`."""
    total = Counts.of(quality)
    minute = total.since(baseline.get(key))
    carrying_for = quality["carrying_age_s"]
    last_saved = quality["last_saved_age_s"]
    idle = (
        bool(quality["carrying"])
        and carrying_for is not None
        and carrying_for >= IDLE_FOR_S
        and (last_saved is None or last_saved >= IDLE_FOR_S)
    )
    return {
        "won": total.won,
        "late": total.late,
        "lost": total.lost,
        "saved": total.saved,
        "lastMinute": {
            "seconds": round(baseline.seconds, 1),
            "won": minute.won,
            "late": minute.late,
            "lost": minute.lost,
            "saved": minute.saved,
        },
        "lossPct": loss_pct(minute),
        "lossPctTotal": loss_pct(total),
        "firstSharePct": None,
        "lagP50Ms": _ms(lag_quantile_s(minute.lag, 0.5)),
        "lagP95Ms": _ms(lag_quantile_s(minute.lag, 0.95)),
        "lagMaxMs": _ms(quality["lag_max_s"]) if total.late else None,
        "stale": quality["stale"],
        "forged": quality["forged"],
        "repeats": quality["repeats"],
        "carrying": bool(quality["carrying"]),
        "carryingForS": _seconds(carrying_for),
        "lastSavedAgeS": _seconds(last_saved),
        "idleForHour": idle,
    }


def add_shares(qualities: Iterable[JSON]) -> None:
    """Fill ``firstSharePct`` of links that carry one tunnel: each one's first arrivals in the
    last minute over all of theirs (None when none arrived)."""
    items = list(qualities)
    total = sum(q["lastMinute"]["won"] for q in items)
    for q in items:
        q["firstSharePct"] = round(100.0 * q["lastMinute"]["won"] / total, 1) if total else None


def summed(qualities: Iterable[Mapping[str, Any]]) -> JSON:
    """won/late/lost/saved (since start and in the last minute) summed over several links."""
    out: JSON = {"won": 0, "late": 0, "lost": 0, "saved": 0}
    minute: JSON = {"won": 0, "late": 0, "lost": 0, "saved": 0}
    seconds: list[float] = []
    for q in qualities:
        for name in ("won", "late", "lost", "saved"):
            out[name] += q[name]
            minute[name] += q["lastMinute"][name]
        seconds.append(q["lastMinute"]["seconds"])
    out["lastMinute"] = {"seconds": max(seconds, default=0.0), **minute}
    return out


def loss_pct(counts: Counts) -> float | None:
    """lost / (won + late + lost), in percent; None when the link was expected to deliver
    nothing."""
    expected = counts.won + counts.late + counts.lost
    return round(100.0 * counts.lost / expected, 3) if expected else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
