"""Command line: `engarde client|server|list-interfaces|check-config|version`, and the original's
`engarde-client [config] | list-interfaces | -v` and `engarde-server [config] | -v` forms.

Exit codes: 0 on success and on a clean shutdown (SIGINT/SIGTERM), 2 for a bad config or bad
arguments, 1 for a start-up failure (address in use, missing privilege, netlink unavailable).
Start-up failures are one line on stderr, never a traceback. Only this module configures logging.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import logging
import logging.handlers
import queue
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import trio

from engarde import __version__
from engarde.config import Config, ConfigError, describe, diff, load_config
from engarde.errors import StartupError

logger = logging.getLogger("engarde")

DEFAULT_CONFIG = "engarde.yml"
LOG_LEVELS = ("debug", "info", "warning", "error")


def _find(exc: BaseException) -> StartupError | None:
    """The first start-up error inside (possibly nested) exception groups."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner)
            if found is not None:
                return found
    return None


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _serve(role: str, path: str, config: Config) -> None:
    # Only the role's modules: a server never imports pyroute2 (the client's netlink).
    from engarde.net.handover import Handover
    from engarde.net.reload import Reloader
    from engarde.net.sd_notify import notify

    runner: Any
    if role == "client":
        from engarde.net.client import run_client as runner
    else:
        from engarde.net.server import run_server as runner

    reloader = Reloader(path, "client" if role == "client" else "server", config)
    handover = Handover(role)
    section = config.client if role == "client" else config.server
    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2)
    with trio.open_signal_receiver(*wanted) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(runner, section, reloader=reloader, handover=handover)
            )
            # READY=1 went out with the "listening" line (engarde.net.ready). What start-up
            # built (sockets, tasks) lives as long as the process too: out of the GC's sight
            # with it. freeze() alone is a list splice, no collection pass: datagrams already
            # flow (the collection ran before trio did).
            gc.freeze()
            nursery.start_soon(_exit_after_handover, handover, nursery.cancel_scope)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    logger.info("SIGHUP received: reloading %s", path)
                    nursery.start_soon(functools.partial(reloader.reload, why="SIGHUP"))
                    continue
                if signum == signal.SIGUSR2:  # an upgrade: see docs/restart.md
                    nursery.start_soon(handover.spawn_successor, nursery)
                    continue
                logger.info("%s received: shutting down", signal.Signals(signum).name)
                if handover.successor_pid is None:  # else systemd follows the successor
                    notify("STOPPING=1")
                nursery.cancel_scope.cancel()
                break


async def _exit_after_handover(handover: Any, scope: trio.CancelScope) -> None:
    """A successor took over: forward what is left for a grace period, then exit."""
    from engarde.net.handover import GRACE_S

    await handover.wait_stepping_down()
    await trio.sleep(GRACE_S)
    logger.info("handed over to pid %s: exiting", handover.successor_pid)
    scope.cancel()


def run_role(role: str, path: str) -> int:
    try:
        config = load_config(path, role=role)  # type: ignore[arg-type]
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    for line in config.warnings:
        logger.warning("%s", line)
    _prepare_interpreter(role, config)
    with _logging_off_the_data_path():
        try:
            trio.run(_serve, role, path, config)
        except KeyboardInterrupt:
            return 0
        except BaseException as exc:
            found = _find(exc)
            if found is None:
                raise
            print(f"engarde {role}: {found}", file=sys.stderr)
            return 1
        logger.info("engarde %s stopped", role)
    return 0


SWITCH_INTERVAL_S = 0.0001  # how long the pump waits at most for the GIL held by Python code


def _prepare_interpreter(role: str, config: Config) -> None:
    """Before the data path starts, do what would otherwise stall it (the pump thread waits for
    the GIL while the control plane holds it, docs/performance.md "relay delay"):

    - import what this role's relay needs: an import holds the GIL in long steps (unmarshal,
      class creation). Not the dashboard's stack (quart, hypercorn: as long again): a start
      from nothing reaches "listening" first and imports it then, with the short switch
      interval below; a successor (docs/restart.md) imports it before it takes over;
    - one full GC pass, then freeze what survived: ~70k long-lived objects (pydantic, trio,
      quart...) the cyclic GC would otherwise rescan in every full pass (~50 ms here);
    - a shorter GIL switch interval: Python code in the trio thread gives the GIL to a waiting
      pump after 0.1 ms instead of 5 ms. The pump releases the GIL for every system call and
      must win it back each time, so while the control plane computes, each of its calls can
      cost a whole interval (`python -m bench.gil_stall`).
    """
    importlib.import_module("engarde.net.client" if role == "client" else "engarde.net.server")
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL_S)


@contextlib.contextmanager
def _logging_off_the_data_path() -> Iterator[None]:
    """The root logger's handlers run in a thread of their own: a log line from the pump (a
    client address seen, a socket that failed) is a queue put, and a slow stderr (a full pipe,
    a busy journal) never holds the relay."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, *handlers, respect_handler_level=True)
    for handler in handlers:
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(records))
    listener.start()
    try:
        yield
    finally:
        listener.stop()  # writes out what is queued
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)


def list_interfaces(path: str | None) -> int:
    """Each interface, the addresses that would be paths and its state. With a config file:
    its exclusions and addressFamilies (without: the original's, the first IPv4 address)."""
    from engarde.core.links import InterfaceTable, path_addresses, usability
    from engarde.net.netlink import NetlinkError, dump_interfaces

    try:
        dump = dump_interfaces()
    except NetlinkError as exc:
        print(f"engarde: {exc}", file=sys.stderr)
        return 1
    table = InterfaceTable()
    table.replace_all(dump.links, dump.addrs)
    client = None
    if path is not None:
        try:
            client = load_config(path, role="client").client
        except ConfigError:
            client = None
    families = client.families if client is not None else None
    rows = []
    for iface in sorted(table.by_index.values(), key=lambda i: i.index):
        state = usability(iface, families)
        if client is not None and client.is_excluded(iface.name):
            state = "excluded"
        paths = path_addresses(iface, families)
        rows.append((iface.name, ", ".join(paths) or "-", state))
    width = max((len(r[0]) for r in rows), default=4)
    for name, address, state in rows:
        print(f"{name:<{width}}  {address:<15}  {state}")
    return 0


def check_config(path: str, role: str | None, against: str | None = None) -> int:
    """Validate and print the effective settings; with `against` (the file a daemon runs
    with), print instead what a reload from it to `path` would change."""
    try:
        config = load_config(path, role=role)  # type: ignore[arg-type]
        running = None if against is None else load_config(against, role=role)  # type: ignore[arg-type]
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    for line in config.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if running is None:
        print(describe(config, role))
        return 0
    changes = diff(running, config, role)
    if not changes:
        print(f"a reload from {against} to {path} would change nothing")
    for change in changes:
        print(f"{change.key}: {change.old} -> {change.new}" + _restart_note(change.live))
    return 0


def _restart_note(live: bool) -> str:
    return "" if live else "  (needs a restart: a reload leaves it as it is)"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS, help="default: info"
    )
    parser = argparse.ArgumentParser(
        prog="engarde",
        description="Send every WireGuard datagram over every usable uplink at once.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"engarde {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for role in ("client", "server"):
        p = sub.add_parser(role, parents=[common], help=f"run the {role}")
        p.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help="default: ./engarde.yml")
    p = sub.add_parser("list-interfaces", parents=[common], help="interfaces and their state")
    p.add_argument("config", nargs="?", default=None, help="mark excluded interfaces")
    p = sub.add_parser("check-config", parents=[common], help="validate, print effective settings")
    p.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    p.add_argument("--role", choices=("client", "server"), default=None)
    p.add_argument(
        "--against",
        metavar="RUNNING",
        default=None,
        help="print what a reload from RUNNING (the file the daemon runs with) would change",
    )
    sub.add_parser("version", parents=[common], help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", "info"))
    if args.command == "version":
        print(f"engarde {__version__}")
        return 0
    if args.command == "list-interfaces":
        return list_interfaces(args.config)
    if args.command == "check-config":
        return check_config(args.config, args.role, args.against)
    return run_role(args.command, args.config)


def _legacy(role: str, argv: Sequence[str] | None) -> int:
    """The Go binaries' forms: `engarde-ROLE [config]`, `-v`, `list-interfaces` (client)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-v", "--version", "version"):
        print(f"engarde-{role} {__version__}")
        return 0
    if role == "client" and args and args[0] == "list-interfaces":
        return main(["list-interfaces", *args[1:]])
    return main([role, *args])


def client_main(argv: Sequence[str] | None = None) -> int:
    return _legacy("client", argv)


def server_main(argv: Sequence[str] | None = None) -> int:
    return _legacy("server", argv)
