"""Log lines that could come per datagram (new client addresses under a flood) are rate-limited."""

from __future__ import annotations

import logging


class LogLimiter:
    """At most `per_s` lines a second on average after a burst of `burst`; then a summary."""

    def __init__(self, logger: logging.Logger, per_s: float = 5.0, burst: float = 30.0) -> None:
        self.logger = logger
        self.per_s = per_s
        self.burst = burst
        self.tokens = burst
        self.last = 0.0
        self.suppressed = 0

    def info(self, now: float, line: str) -> None:
        self._log(logging.INFO, now, line)

    def warning(self, now: float, line: str) -> None:
        self._log(logging.WARNING, now, line)

    def _log(self, level: int, now: float, line: str) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.per_s)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            if self.suppressed:
                self.logger.log(level, "(%d similar lines suppressed)", self.suppressed)
                self.suppressed = 0
            self.logger.log(level, "%s", line)
        else:
            self.suppressed += 1
