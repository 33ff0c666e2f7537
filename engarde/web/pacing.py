"""Request pacing: a script polling the API in a tight loop must not slow the relay.

Every HTTP request costs the process about a millisecond of CPU that the relay shares (the pump
thread and the trio thread take turns on the GIL). The page itself needs one request per load
plus one event stream, and scripts or the LuCI app poll every few seconds, so the dashboard
admits requests at a steady rate with a burst allowance (a generic cell rate algorithm) and
*delays* the excess instead of answering it at once: a client hammering back to back is slowed to
the allowed rate without costing more CPU. A request that would have to wait longer than
`max_wait_s` is refused with 429. Waiting requests also slow down password guessing.
"""

from __future__ import annotations

RATE_PER_S = 20.0
BURST = 40
MAX_WAIT_S = 2.0


class Pacer:
    def __init__(
        self, rate_per_s: float = RATE_PER_S, burst: int = BURST, max_wait_s: float = MAX_WAIT_S
    ) -> None:
        self.interval = 1.0 / rate_per_s
        self.tolerance = (burst - 1) * self.interval
        self.max_wait_s = max_wait_s
        self._tat = 0.0  # theoretical arrival time of the next request

    def reserve(self, now: float) -> float | None:
        """Seconds this request must wait (0.0: go ahead), or None: refuse it."""
        tat = max(self._tat, now)
        wait = max(0.0, tat - self.tolerance - now)
        if wait > self.max_wait_s:
            return None
        self._tat = tat + self.interval
        return wait
