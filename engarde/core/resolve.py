"""When the client resolves its host-name destinations again (issue 13: the server's name is
followed). Pure: the caller passes the clock and what it heard.

Every `resolveInterval` (default 60 s), and sooner while the server is silent: once no path
has received anything for SILENCE_S (counted from the last move, or the start, at the
latest), a resolution is due SOON_FIRST_S after the previous one, the gap doubling while the
silence lasts, up to SOON_MAX_S (never beyond the interval). A move or anything heard starts
the gaps afresh. A dynamic-DNS server that moved is thus found within ~10-15 s of its last
reply even with a long interval, and an idle tunnel costs a lookup every 30 s at most.
"""

from __future__ import annotations

from dataclasses import dataclass

SILENCE_S = 10.0
SOON_FIRST_S = 2.0
SOON_MAX_S = 30.0


@dataclass(slots=True)
class ResolveSchedule:
    last: float  # when names were last resolved (or the start)
    moved: float  # when a name last moved (or the start): silence counts from there at most
    soon_s: float = SOON_FIRST_S

    @classmethod
    def start(cls, now: float) -> ResolveSchedule:
        return cls(last=now, moved=now)

    def _heard(self, last_heard: float | None) -> float:
        return self.moved if last_heard is None else max(last_heard, self.moved)

    def silent(self, now: float, last_heard: float | None) -> bool:
        """True when nothing came from the server for SILENCE_S."""
        return now - self._heard(last_heard) >= SILENCE_S

    def next_at(self, interval_s: float | None, last_heard: float | None) -> float | None:
        """When to resolve next (None: never). Recompute after waking: something heard
        meanwhile puts the silence check later."""
        if interval_s is None:
            return None
        regular = self.last + interval_s
        sooner = max(self._heard(last_heard) + SILENCE_S, self.last + self.soon_s)
        return min(regular, sooner)

    def resolved(self, now: float, *, moved: bool, silent: bool) -> None:
        """Names were just resolved; `moved`: one now points elsewhere."""
        self.last = now
        if moved:
            self.moved = now
            self.soon_s = SOON_FIRST_S
        elif silent:
            self.soon_s = min(SOON_MAX_S, self.soon_s * 2)
        else:
            self.soon_s = SOON_FIRST_S
