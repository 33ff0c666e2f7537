"""The client's resolver task: host-name destinations are resolved again every
`resolveInterval`, and sooner while the server is silent (core/resolve.py decides when), so a
server that moved (dynamic DNS) is followed without waiting for a link to flap.

It only tells the core (`ClientCore.on_resolved`); when a name now points elsewhere the core
pokes the link supervisor, which gives each path using it a new socket to the new address
before the old socket goes (the old one is still read for a moment: replies in flight).
getaddrinfo runs in a worker thread (trio.socket.getaddrinfo): a slow DNS server delays
nothing else.
"""

from __future__ import annotations

import logging
import time

import trio

from engarde.core.addr import format_address
from engarde.core.client import ClientCore
from engarde.core.resolve import ResolveSchedule
from engarde.net.ratelimit import LogLimiter
from engarde.net.sockets import SocketSetupError, resolve_udp_all

logger = logging.getLogger(__name__)

RECHECK_S = 5.0  # the longest sleep: a reload may change resolveInterval


async def run_resolver(
    core: ClientCore, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Resolve `core.host_destinations()` when the schedule says so. Runs forever."""
    schedule = ResolveSchedule.start(time.monotonic())
    failures = LogLimiter(logger, per_s=1 / 60, burst=3.0)
    task_status.started()
    while True:
        now = time.monotonic()
        heard = core.last_heard()
        at = schedule.next_at(core.config.resolve_interval_s, heard)
        if at is None or at > now:
            await trio.sleep(RECHECK_S if at is None else min(RECHECK_S, at - now))
            continue
        silent = schedule.silent(now, heard)
        moved = False
        for dst, family in core.host_destinations():
            try:
                addresses = await resolve_udp_all(dst, what="dstAddr", family=family)
            except SocketSetupError as exc:
                key = (dst, family)
                current = core.resolved.get(key)
                kept = "" if current is None else f"; keeping {format_address(current)}"
                failures.warning(time.monotonic(), f"{exc}{kept}")
                continue
            line = core.on_resolved(dst, family, addresses, time.monotonic())
            if line is not None:
                logger.info("%s", line)
                moved = True
        if silent:
            logger.debug("nothing from the server for a while: host names resolved again")
        schedule.resolved(time.monotonic(), moved=moved, silent=silent)
