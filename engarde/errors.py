"""StartupError: anything that stops the daemon from starting, already phrased for the user.

The modules that can fail at start-up derive their errors from it (sockets, netlink, the
dashboard, a handover), so `cli.py` recognises them without importing those modules: a server
never imports pyroute2, a daemon without a dashboard never imports the web stack.
"""

from __future__ import annotations


class StartupError(Exception):
    """One line for the user: what could not be done, where and why. Exit code 1."""
