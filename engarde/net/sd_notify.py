"""systemd's readiness protocol (sd_notify(3)), without libsystemd.

Under `Type=notify` systemd sets $NOTIFY_SOCKET to a datagram unix socket (a path, or an
abstract address written with a leading '@'). `notify("READY=1")` tells it that engarde is
listening; `notify("STOPPING=1")` that it is shutting down; other lines (`MAINPID=...`,
`STATUS=...`) pass through as given. Without $NOTIFY_SOCKET (not under systemd, or another
Type) it does nothing. It never raises: readiness is advisory, the relay must not fail for it.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)


def notify(*lines: str) -> bool:
    """Send `lines` (joined by newlines) to $NOTIFY_SOCKET; True when it was sent."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target or not lines:
        return False
    address = "\0" + target[1:] if target.startswith("@") else target
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), address)
    except OSError as exc:
        logger.warning("sd_notify to %s failed: %s", target, exc)
        return False
    return True
