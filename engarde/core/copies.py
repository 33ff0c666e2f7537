"""Copies of one WireGuard datagram: which one is first, and what each link is worth.

Theory of operation
-------------------
engarde sends every datagram over every link, so the receiving side sees N copies of each.
WireGuard's transport-data header is clear text: every copy carries the same receiver index
(the *session*) and the same 64-bit counter, and ends with the same 16-byte authentication tag.
`CopyTracker.see(index, counter, tag, link, now)` is fed one call per transport-data copy and
answers "first copy" (True: hand it to WireGuard) or "exact copy of one already handed on"
(False: drop it, WireGuard would only decrypt it to throw it away).

The key is (session index, counter, tag). Index and counter alone are not enough: a forged
datagram that reuses a real counter would then make us drop the real one, and an attacker on
one path could kill the tunnel on all the others. With the tag in the key, a copy whose tag
differs from the first one's is never dropped (counted as `forged`): WireGuard decides.

The window. Per session the tracker remembers the counters whose first copy arrived in the last
`window_s` seconds (1 s), at most `window_counters` of them (16384): a dict from counter to a
slot ``[first arrival time, first link, links seen (bit mask), links expected (bit mask), tag]``
plus a deque of counters in first-arrival order. When a counter leaves the window (older than
`window_s`, pushed out by the count cap, or its session forgotten) it is *settled*:

- ``lost``  +1 for every link that was carrying copies when the first copy arrived (the
  "expected" mask taken then) and never delivered this counter within the window;
- ``saved`` +1 for the first link if it was the only link to deliver while at least one other
  link was expected: the datagram the tunnel would have lost without it.

At arrival time: ``won`` (first copy), ``late`` (an exact copy after another link's) with its
lag behind the first copy in a histogram (`LAG_BOUNDS_S`), ``stale`` (a counter older than the
window that is not in it: we cannot tell whether it is a copy, so it is handed on and
WireGuard's own replay window decides), ``forged`` (same counter, different tag).

Which links are charged. A link is charged with losses only for counters first seen while it
was *carrying*: `open(link)` says it may carry copies from now on (socket opened, address
proven); it starts carrying at its first copy or `JOIN_GRACE_S` after `open`, whichever comes
first (so a new uplink is not charged for the moment the far end needs to start using it, but a
link that never delivers anything is charged after the grace); `close(link)` says it stopped
(socket closed, excluded, address expired). Each carrying link holds one bit of a 64-bit mask;
a bit given up is reused only after two windows, when no slot can still name it. A 65th link
at once is not accounted (still deduplicated).

Memory bound, by design: at most `max_sessions` sessions (4 by default; WireGuard keeps at most
three keypairs per peer, so at most three receiver indices are in use per direction) of at most
`window_counters` slots each, and a `SlotBudget` shared by the trackers of one process caps the
slots of all of them (a new first copy beyond the budget settles its session's oldest slot
first). A slot costs about 250 bytes (dict entry, deque entry, list, float, counter int,
16-byte tag), so the default client budget of 16384 slots is ~4 MiB and the server's 65536
slots ~16 MiB, whatever arrives. In practice slots live `window_s`, so they number at most the
datagram rate times one second. Sessions idle for `SESSION_IDLE_S` are forgotten by `sweep`;
a new session beyond `max_sessions` evicts the least recently used one.

Odd input never raises and never grows memory past the bound: counters going backwards inside
the window are ordinary reordering; far below the window (more than `RESET_GAP` below the
newest settled counter: a session index reused by a new session, or a forged huge counter that
pushed the window ahead) the session starts over; any u32 index and u64 counter is accepted.

What this module does not do: read sockets or clocks (callers pass `now`), parse headers (see
core/wireguard.py), decide who may send (core/server.py), or keep per-minute figures (the
dashboard takes differences of these cumulative counters).
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

WINDOW_S = 1.0
WINDOW_COUNTERS = 16384
MAX_SESSIONS = 4
SESSION_IDLE_S = 200.0  # WireGuard rejects a keypair after 180 s
JOIN_GRACE_S = 2.0
RESET_GAP = 1 << 20  # a counter this far below the settled window: the session started over
MAX_LINKS = 64
CLIENT_BUDGET = 16384
SERVER_BUDGET = 65536

# Lag histogram: upper bounds in seconds (the last bucket is "more than 1 s", i.e. > WINDOW_S
# cannot happen but a caller's window may be longer).
LAG_BOUNDS_S: tuple[float, ...] = (
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
)  # fmt: skip
LAG_BUCKETS = len(LAG_BOUNDS_S) + 1

# A slot is a list, not an object (made once per datagram, ~3x cheaper), indexed by literals:
# [0] first arrival time, [1] first link, [2] links seen (mask), [3] links expected (mask),
# [4] tag.


@dataclass(slots=True)
class LinkQuality:
    """What one link delivered, as seen by the receiving side. Cumulative counters.

    Owned by the tracker's user (an uplink, a client address); the tracker bumps the counters
    and manages `bit` (0 while the link is not carrying copies).
    """

    won: int = 0
    late: int = 0
    lost: int = 0
    saved: int = 0
    stale: int = 0
    forged: int = 0
    repeats: int = 0  # the same copy twice over this very link (a network duplicate)
    lag_buckets: list[int] = field(default_factory=lambda: [0] * LAG_BUCKETS)
    lag_sum_s: float = 0.0
    lag_max_s: float = 0.0
    bit: int = 0
    carrying: bool = False  # joined: charged with losses
    carrying_since: float | None = None
    last_saved_at: float | None = None  # first arrival of the last datagram only it delivered
    opened_at: float | None = None  # open() called, not yet carrying

    def as_dict(self, now: float) -> dict[str, Any]:
        """The counters as JSON-ready data; times as ages at `now` (None: never)."""
        return {
            "won": self.won,
            "late": self.late,
            "lost": self.lost,
            "saved": self.saved,
            "stale": self.stale,
            "forged": self.forged,
            "repeats": self.repeats,
            "lag_buckets": list(self.lag_buckets),
            "lag_sum_s": self.lag_sum_s,
            "lag_max_s": self.lag_max_s,
            "carrying": self.carrying,
            "carrying_age_s": _age(self.carrying_since, now),
            "last_saved_age_s": _age(self.last_saved_at, now),
        }


def _age(t: float | None, now: float) -> float | None:
    return None if t is None else max(0.0, now - t)


_SUMMED = ("won", "late", "lost", "saved", "stale", "forged", "repeats")


def merge_quality(qualities: list[LinkQuality], now: float) -> dict[str, Any]:
    """Several links' qualities as one (an interface's paths), shaped like `as_dict`."""
    out: dict[str, Any] = {key: sum(getattr(q, key) for q in qualities) for key in _SUMMED}
    buckets = [0] * LAG_BUCKETS
    for q in qualities:
        for i, count in enumerate(list(q.lag_buckets)):
            buckets[i] += count
    carrying = [q.carrying_since for q in qualities if q.carrying_since is not None]
    saved = [q.last_saved_at for q in qualities if q.last_saved_at is not None]
    out.update(
        lag_buckets=buckets,
        lag_sum_s=sum(q.lag_sum_s for q in qualities),
        lag_max_s=max((q.lag_max_s for q in qualities), default=0.0),
        carrying=any(q.carrying for q in qualities),
        carrying_age_s=_age(min(carrying), now) if carrying else None,
        last_saved_age_s=_age(max(saved), now) if saved else None,
    )
    return out


class SlotBudget:
    """Slots held by every tracker that shares this budget (one per process role)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


@dataclass(slots=True)
class TrackerStats:
    settled: int = 0  # counters that left the window
    sessions_started: int = 0
    sessions_evicted: int = 0  # pushed out by max_sessions
    sessions_reset: int = 0  # started over (index reused, or a counter far below the window)
    untracked_links: int = 0  # a link that found no free bit

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Session:
    __slots__ = ("floor", "last_seen", "order", "slots")

    def __init__(self, now: float) -> None:
        self.slots: dict[int, list[Any]] = {}
        self.order: deque[int] = deque()
        self.floor = -1  # the highest counter settled so far
        self.last_seen = now


class CopyTracker:
    """First copies and per-link accounting for the sessions of one WireGuard peer (or of the
    one peer behind an engarde client). Not thread-safe: one thread owns it (the pump)."""

    def __init__(
        self,
        *,
        window_s: float = WINDOW_S,
        window_counters: int = WINDOW_COUNTERS,
        max_sessions: int = MAX_SESSIONS,
        budget: SlotBudget | None = None,
    ) -> None:
        self.window_s = window_s
        self.window_counters = window_counters
        self.max_sessions = max_sessions
        self.budget = budget if budget is not None else SlotBudget(CLIENT_BUDGET)
        self.stats = TrackerStats()
        self._sessions: dict[int, _Session] = {}
        self._carrying_mask = 0
        self._by_bit: dict[int, LinkQuality] = {}  # bit -> link (kept after close, see close())
        self._free_at: dict[int, float] = {}  # bit -> when it may be given to another link
        self._opening: list[LinkQuality] = []
        self._last_index = -1  # the session of the previous copy, cached (indices are u32)
        self._last_session = _Session(0.0)

    # ---- links -------------------------------------------------------------------------------

    def open(self, link: LinkQuality, now: float) -> None:
        """`link` may carry copies from now on: it is charged with losses from its first copy,
        or from `JOIN_GRACE_S` from now if none comes."""
        if link.carrying or link.opened_at is not None:
            return
        link.opened_at = now
        self._opening.append(link)

    def close(self, link: LinkQuality, now: float) -> None:
        """`link` stopped carrying copies (socket closed, excluded, address forgotten)."""
        if link.opened_at is not None:
            link.opened_at = None
            self._opening = [each for each in self._opening if each is not link]
        if not link.carrying:
            return
        link.carrying = False
        link.carrying_since = None
        self._carrying_mask &= ~link.bit
        # The bit stays in _by_bit: slots settled later may still charge this link (copies in
        # flight when it stopped). It is given to another link only after two windows.
        self._free_at[link.bit] = now + 2 * self.window_s

    def _join(self, link: LinkQuality, now: float) -> None:
        if link.opened_at is not None:
            link.opened_at = None
            self._opening = [each for each in self._opening if each is not link]
        bit = link.bit
        if not bit or self._by_bit.get(bit) is not link:
            bit = self._free_bit(now)
            if not bit:
                self.stats.untracked_links += 1
                link.bit = 0
                link.carrying = True  # never retried per datagram; deduplicated, not accounted
                link.carrying_since = now
                return
        link.bit = bit
        self._by_bit[bit] = link
        self._free_at.pop(bit, None)
        link.carrying = True
        link.carrying_since = now
        self._carrying_mask |= bit

    def _free_bit(self, now: float) -> int:
        for k in range(MAX_LINKS):
            bit = 1 << k
            if bit not in self._by_bit:
                return bit
            if self._free_at.get(bit, float("inf")) <= now:
                return bit
        return 0

    # ---- copies --------------------------------------------------------------------------------

    def see(
        self, index: int, counter: int, tag: bytes | bytearray, link: LinkQuality, now: float
    ) -> bool:
        """One transport-data copy from `link`. True: first copy (or cannot tell): hand it on.
        False: an exact copy of one already handed on. Never raises.

        Per datagram, so written for speed: the last session is cached, settling is left to
        `sweep` unless the count cap or the budget forces it.
        """
        if not link.carrying:
            self._join(link, now)
        session = self._last_session if index == self._last_index else self._session_for(index, now)
        slots = session.slots
        slot = slots.get(counter)
        if slot is None:
            if counter <= session.floor and not self._restart_if_far(session, counter):
                link.stale += 1
                return True
            budget = self.budget
            full = budget.used >= budget.limit or len(slots) >= self.window_counters
            if full and session.order:
                self._settle_oldest(session)
            slots[counter] = [now, link, link.bit, self._carrying_mask, tag]
            session.order.append(counter)
            session.last_seen = now
            budget.used += 1
            link.won += 1
            return True
        if slot[4] != tag:  # the tag
            link.forged += 1
            return True
        bit = link.bit
        if slot[2] & bit:  # seen
            link.repeats += 1
            return False
        slot[2] |= bit
        link.late += 1
        lag = now - slot[0]  # first arrival
        link.lag_buckets[bisect.bisect_left(LAG_BOUNDS_S, lag)] += 1
        link.lag_sum_s += lag
        if lag > link.lag_max_s:
            link.lag_max_s = lag
        return False

    def has_copy(self, index: int, counter: int, tag: bytes | bytearray) -> bool:
        """Whether a copy with exactly this index, counter and tag is in the window (read only:
        the server asks before it lets an unproven address's copy count)."""
        session = self._sessions.get(index)
        if session is None:
            return False
        slot = session.slots.get(counter)
        return slot is not None and slot[4] == tag

    # ---- housekeeping --------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Settle counters older than the window, forget idle sessions, start accounting links
        whose grace ran out. Call a few times a second."""
        cutoff = now - self.window_s
        for index, session in list(self._sessions.items()):
            order, slots = session.order, session.slots
            while order and slots[order[0]][0] <= cutoff:
                self._settle_oldest(session)
            if now - session.last_seen > SESSION_IDLE_S:
                self._forget(index)
        if self._opening:
            for link in list(self._opening):
                if link.opened_at is not None and now - link.opened_at >= JOIN_GRACE_S:
                    self._join(link, now)

    def settle_all(self) -> None:
        """Settle every counter (the peer is gone, or the process stops)."""
        for index in list(self._sessions):
            self._forget(index)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    @property
    def slots(self) -> int:
        return sum(len(s.slots) for s in self._sessions.values())

    def session_indices(self) -> list[int]:
        return list(self._sessions)

    # ---- internals -----------------------------------------------------------------------------

    def _session_for(self, index: int, now: float) -> _Session:
        session = self._sessions.get(index)
        if session is None:
            if len(self._sessions) >= self.max_sessions:
                stalest = min(self._sessions, key=lambda i: self._sessions[i].last_seen)
                self._forget(stalest)
                self.stats.sessions_evicted += 1
            session = self._sessions[index] = _Session(now)
            self.stats.sessions_started += 1
        self._last_index, self._last_session = index, session
        return session

    def _forget(self, index: int) -> None:
        session = self._sessions.pop(index)
        self._settle_all(session)
        if index == self._last_index:
            self._last_index = -1

    def _restart_if_far(self, session: _Session, counter: int) -> bool:
        """A counter at or below the settled window and not in it. Far below (more than
        RESET_GAP): the index was reused by a new session, or a forged huge counter pushed the
        window ahead: start the session over and return True. Otherwise it is stale."""
        if session.floor - counter <= RESET_GAP:
            return False
        self._settle_all(session)
        session.floor = -1
        self.stats.sessions_reset += 1
        return True

    def _settle_oldest(self, session: _Session) -> None:
        counter = session.order.popleft()
        slot = session.slots.pop(counter)
        seen, expected = slot[2], slot[3]
        self.budget.used -= 1
        self.stats.settled += 1
        if counter > session.floor:
            session.floor = counter
        missing = expected & ~seen
        if not missing:
            return
        first: LinkQuality = slot[1]
        if seen and seen == first.bit:
            first.saved += 1
            first.last_saved_at = slot[0]
        by_bit = self._by_bit
        while missing:
            low = missing & -missing
            missing ^= low
            link = by_bit.get(low)
            if link is not None:
                link.lost += 1

    def _settle_all(self, session: _Session) -> None:
        while session.order:
            self._settle_oldest(session)


def lag_quantile_s(buckets: list[int] | tuple[int, ...], q: float) -> float | None:
    """The `q` quantile (0..1) of a lag histogram, as the upper bound of its bucket (the last
    bucket reports the last bound); None when the histogram is empty."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    running = 0
    for i, count in enumerate(buckets):
        running += count
        if running >= rank and count:
            return LAG_BOUNDS_S[min(i, len(LAG_BOUNDS_S) - 1)]
    return LAG_BOUNDS_S[-1]
