"""The end of both roles' start-up: take over from a predecessor (engarde.net.handover), the
"listening" line and systemd's READY=1, then the dashboard if configured.

The relay comes first: the web stack (quart, hypercorn: half of the start-up's imports) is
imported only when a webManager is configured, and only once the relay carries traffic.
"""

from __future__ import annotations

import functools
import gc
import importlib
import logging
import os
from typing import Any

import trio

from engarde.config import ClientConfig, ServerConfig, WebManagerConfig
from engarde.net.handover import Handover
from engarde.net.sd_notify import notify


async def start_dashboard_and_report(
    nursery: trio.Nursery,
    core: Any,
    config: ClientConfig | ServerConfig,
    log: logging.Logger,
    listening: str,
    task_status: trio.TaskStatus[Any],
    reloader: Any = None,
    handover: Handover | None = None,
) -> None:
    """The relay is up: take over from a predecessor if there is one, log `listening` (true
    from now on: the datagrams come to this process), tell systemd, report started; then start
    the dashboard. A dashboard that cannot start ends the process (DashboardError)."""
    predecessor = None
    if handover is not None:
        if handover.predecessor_pid is not None and config.webManager is not None:
            # A successor has the time: the predecessor serves meanwhile. Once it receives,
            # an import would hold the GIL the pump needs.
            importlib.import_module("engarde.web.serve")
        predecessor = await nursery.start(handover.run)
    description = f" ({config.description})" if config.description else ""
    log.info("%s%s", listening, description)
    if predecessor is None:
        notify("READY=1")
    else:  # systemd follows the new main process (the unit needs NotifyAccess=all)
        notify(f"MAINPID={os.getpid()}", "READY=1")
    task_status.started(core)
    if config.webManager is not None:
        # The web stack's ~300 modules make some 200k objects that live as long as the
        # process. Left to the cyclic GC, a full pass over them came up mid-import and held
        # the GIL the pump waits for 14-29 ms (measured); with the GC off meanwhile and those
        # objects frozen after (a list splice, no pass), nothing walks them while datagrams
        # flow (see cli._prepare_interpreter for the rest of start-up).
        gc.disable()
        try:
            await nursery.start(_run_dashboard, core, config.webManager, reloader, handover)
        finally:
            gc.freeze()
            gc.enable()


async def _run_dashboard(
    core: Any,
    web: WebManagerConfig,
    reloader: Any,
    handover: Handover | None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The dashboard, stopped (its port freed) before a successor is told to go ahead."""
    from engarde.web.serve import run_dashboard

    stopped = trio.Event()
    with trio.CancelScope() as scope:
        if handover is not None:

            async def stop() -> None:
                scope.cancel()
                await stopped.wait()

            handover.before_step_down(stop)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(run_dashboard, core, web, reloader=reloader))
                task_status.started()
        finally:
            stopped.set()
