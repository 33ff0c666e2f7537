"""Serving the dashboard with hypercorn inside engarde's own trio nursery.

    run_dashboard
    ├─ hypercorn       engarde.web.connections.serve (hypercorn's per-connection server
    │                  behind a cap on connections per address and in all), shielded
    └─ sampler         one snapshot a second -> history + one event to every open page

Start-up: `run_dashboard` reports started only once hypercorn listens. A listen address that
cannot be bound (port taken, address not on this host, bad host name) raises `DashboardError`
before that, with one line naming the address, the reason and the errno; hypercorn's and
quart's exceptions never leave this package.

Shutdown: when run_dashboard is cancelled (Ctrl-C, SIGTERM, the relay ending) it ends every
event stream and triggers hypercorn's graceful shutdown, which gives requests in flight
GRACEFUL_TIMEOUT_S; hypercorn runs in a shielded scope with a hard deadline of HARD_STOP_S so
the process exits promptly whatever a browser does.
"""

from __future__ import annotations

import errno
import functools
import logging
import mimetypes
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from quart_trio import QuartTrio

from engarde.config import WebManagerConfig, parse_host_port
from engarde.errors import StartupError
from engarde.web.app import create_app, dashboard_of
from engarde.web.connections import ConnectionLimits, serve
from engarde.web.live import Core, run_sampler

# The MIME table (/etc/mime.types) is read now, with the dashboard's imports, not in one step
# when the first page is served while datagrams flow (docs/performance.md, "Relay delay").
mimetypes.init()

logger = logging.getLogger(__name__)

GRACEFUL_TIMEOUT_S = 0.5
HARD_STOP_S = 2.0
KEEP_ALIVE_S = 5.0  # an idle connection (none sent a request yet) is closed after this; it
# holds a file descriptor and a place under the connection caps until then (engarde.web.connections)

# hypercorn logs "Running on ... (CTRL + C to quit)" at INFO; engarde says it its own way.
_hypercorn_log = logging.getLogger(__name__ + ".hypercorn")
_hypercorn_log.setLevel(logging.WARNING)


class DashboardError(StartupError):
    """The dashboard cannot be served (e.g. its port is taken). One line, for the user."""


async def run_dashboard(
    core: Core,
    config: WebManagerConfig,
    *,
    reloader: Any = None,
    limits: ConnectionLimits | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard on ``config.listenAddr`` until cancelled.

    Reports started (with the base URL, e.g. ``http://127.0.0.1:9001``) once listening. Raises
    DashboardError before that when the address cannot be bound. ``limits``: the connection
    caps (engarde.web.connections; default 16 per client address, 128 in all).
    """
    limits = limits if limits is not None else ConnectionLimits()
    listen = config.listenAddr
    try:
        host, port = parse_host_port(listen)
    except ValueError as exc:
        raise DashboardError(f"cannot serve the dashboard on {listen}: {exc}") from None
    reload = None
    if reloader is not None:  # engarde.net.reload.Reloader (the web layer does not import net)

        async def reload(dry_run: bool) -> Any:
            return await reloader.reload(dry_run=dry_run, why="dashboard")

    app = create_app(core, config, reload=reload)
    dashboard = dashboard_of(app)
    if reloader is not None:
        reloader.on_applied(lambda section: setattr(dashboard, "web", section.webManager))
    hconfig = _hypercorn_config(host, port)
    stop = trio.Event()
    # Shielded once serving (a graceful stop, bounded by HARD_STOP_S), not while starting: a
    # cancellation then must reach hypercorn, or nursery.start would wait for it forever
    # (trio leaves a child started in a cancelled nursery where it is).
    shield = trio.CancelScope()
    error: DashboardError | None = None
    cause: OSError | None = None

    async with trio.open_nursery() as nursery:
        try:
            try:
                binds: list[str] = await nursery.start(
                    functools.partial(_serve, app, hconfig, limits, stop.wait, shield)
                )
            except (OSError, BaseExceptionGroup) as exc:
                cause = _socket_error(exc)
                if cause is None:
                    raise
                error = DashboardError(
                    f"cannot serve the dashboard on {listen}: {_describe_socket_error(cause)}"
                )
            else:
                shield.shield = True
                url = binds[0] if binds else f"http://{listen}"
                nursery.start_soon(run_sampler, dashboard)
                logger.info(
                    "dashboard on %s (%s)",
                    url,
                    "basic auth" if config.auth_enabled else "no authentication",
                )
                if not config.auth_enabled and not _is_loopback(host):
                    logger.warning(
                        "the dashboard on %s has no username/password: anyone who can reach "
                        "it can exclude uplinks",
                        listen,
                    )
                task_status.started(url)
                await trio.sleep_forever()
        finally:
            # Whatever ends us (cancellation, start-up failure): stop hypercorn gracefully and
            # end the event streams, within a hard deadline.
            shield.deadline = trio.current_time() + HARD_STOP_S
            stop.set()
            dashboard.close()
    if error is not None:
        raise error from cause


async def _serve(
    app: QuartTrio,
    hconfig: HypercornConfig,
    limits: ConnectionLimits,
    shutdown_trigger: Callable[[], Awaitable[None]],
    shield: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    with shield:
        await serve(
            app, hconfig, limits, shutdown_trigger=shutdown_trigger, task_status=task_status
        )


def _hypercorn_config(host: str, port: int) -> HypercornConfig:
    hconfig = HypercornConfig()
    shown_host = f"[{host}]" if ":" in host else host
    hconfig.bind = [f"{shown_host}:{port}"]
    hconfig.accesslog = None
    hconfig.errorlog = _hypercorn_log
    hconfig.graceful_timeout = GRACEFUL_TIMEOUT_S
    hconfig.include_server_header = False
    hconfig.keep_alive_timeout = KEEP_ALIVE_S
    return hconfig


def _socket_error(exc: BaseException) -> OSError | None:
    """The socket error when ``exc`` is one, or a group of nothing but such errors."""
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(OSError)
        if matched is None or rest is not None:
            return None
        leaves = list(_leaves(matched))
        return leaves[0] if leaves else None
    return exc if isinstance(exc, OSError) else None


def _describe_socket_error(exc: OSError) -> str:
    """'<reason> [ERRNO NAME]'."""
    if isinstance(exc, socket.gaierror):
        name = _EAI_NAMES.get(exc.errno or 0, f"EAI {exc.errno}")
        return f"cannot resolve the host name: {exc.strerror} [{name}]"
    code = exc.errno
    name = errno.errorcode.get(code, f"errno {code}") if code is not None else "no errno"
    return f"{exc.strerror or exc} [{name}]"


def _leaves(group: BaseExceptionGroup[Any]) -> Iterator[Any]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


_EAI_NAMES = {
    getattr(socket, name): name
    for name in dir(socket)
    if name.startswith("EAI_") and isinstance(getattr(socket, name), int)
}


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
