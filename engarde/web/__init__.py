"""The web side: live page, JSON API (the original's v1 and a richer v2), /metrics.

quart-trio served by hypercorn inside engarde's own nursery (engarde.web.serve). The dashboard
reads the relay only through the core's ``snapshot(now)`` and changes it only through the
core's exclusion commands; it never touches sockets. See docs/web.md.
"""

from __future__ import annotations
