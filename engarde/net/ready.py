"""The end of both roles' start-up: the dashboard if configured, then the "listening" line."""

from __future__ import annotations

import functools
import logging
from typing import Any

import trio

from engarde.config import ClientConfig, ServerConfig


async def start_dashboard_and_report(
    nursery: trio.Nursery,
    core: Any,
    config: ClientConfig | ServerConfig,
    log: logging.Logger,
    listening: str,
    task_status: trio.TaskStatus[Any],
    reloader: Any = None,
) -> None:
    """Start the dashboard (webManager) and only then log `listening` and report started, so
    that the line is true when it appears and a dashboard error surfaces before it."""
    if config.webManager is not None:
        from engarde.web.serve import run_dashboard

        await nursery.start(
            functools.partial(run_dashboard, core, config.webManager, reloader=reloader)
        )
    description = f" ({config.description})" if config.description else ""
    log.info("%s%s", listening, description)
    task_status.started(core)
