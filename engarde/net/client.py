"""run_client: the client's nursery tree (see docs/architecture.md).

run_client
├─ pump               the data path's thread (engarde.net.pump), one epoll over the hot sockets:
│                       WireGuard -> every uplink socket (non-blocking sends)
│                       each uplink socket -> copy tracker (first copy?) -> WireGuard
│                       every 0.25 s: settle copies older than the window
├─ netlink watcher    kernel link/address events -> core -> supervisor wake-up
├─ link supervisor    core.wanted() vs running uplinks; one task per uplink
│   └─ uplink task    opens its socket, hands it to the pump, takes it back and closes it
├─ resolver           host-name destinations resolved again (resolveInterval, and sooner on
│                       silence from the server) -> core -> supervisor moves the paths
└─ dashboard          optional (webManager)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time

import trio

from engarde.config import ClientConfig
from engarde.core.client import ClientCore
from engarde.net.handover import Handover
from engarde.net.latency import TICK_S, DelaySampler
from engarde.net.netlink import run_netlink_watcher
from engarde.net.pump import Pump, run_pump
from engarde.net.ready import start_dashboard_and_report
from engarde.net.reload import Reloader, ReloadError
from engarde.net.resolver import run_resolver
from engarde.net.sockets import SocketSetupError, open_listen_socket, resolve_udp
from engarde.net.uplinks import Fanout, run_link_supervisor, wake_channel, wireguard_handler

logger = logging.getLogger(__name__)


async def check_destinations(old: ClientConfig, new: ClientConfig) -> None:
    """Resolve the destinations a reload brings in (host names): one that does not resolve
    stops the reload (ReloadError) instead of leaving paths failing."""
    before = _destinations(old)
    for text in sorted(_destinations(new) - before):
        try:
            await resolve_udp(text, what="reloaded destination")
        except SocketSetupError as exc:
            raise ReloadError(str(exc)) from exc


def _destinations(config: ClientConfig) -> set[str]:
    found = {config.dstAddr, config.dstAddrV6}
    for override in config.dstOverrides:
        found |= {override.dstAddr, override.dstAddrV6}
    return {text for text in found if text}


SWEEP_PERIOD_S = 0.25  # settle copies older than the window (per-link lost/saved)
PATHS_S = 5.0  # a successor waits this long at most for its paths before taking over


async def run_client(
    config: ClientConfig,
    *,
    reloader: Reloader | None = None,
    handover: Handover | None = None,
    task_status: trio.TaskStatus[ClientCore] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the client until cancelled. Raises SocketSetupError / NetlinkError / HandoverError
    at start-up.

    With a `handover`, the listen socket is shared with a predecessor serving the same address
    (engarde.net.handover): this process takes over from it once every usable path carries.

    With a `reloader`, a reload applies new settings to the core (in the trio thread: the
    pump's handlers only read the few attributes it changes, once per batch); changed
    destinations or address families change the wanted paths, and the supervisor opens the new
    sockets before it closes the old ones."""
    core = ClientCore(config, now=time.monotonic())
    poke, wakeups = wake_channel()
    core.on_change = poke
    if handover is None:
        wg_sock = open_listen_socket(config.listenAddr, what="client.listenAddr")
    else:
        wg_sock = await handover.open_listen_socket(config.listenAddr, what="client.listenAddr")
    fanout = Fanout()
    pump = Pump()
    sampler = DelaySampler(core.delay)
    sample = sampler.watch(wg_sock, "wireguard")
    pump.register(wg_sock, wireguard_handler(wg_sock, core, fanout, pump.receiver(), sample=sample))
    pump.every(SWEEP_PERIOD_S, lambda: core.sweep(time.monotonic()))
    pump.every(TICK_S, sampler.tick)

    with wg_sock, contextlib.closing(sampler):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_pump, pump)
            await nursery.start(run_netlink_watcher, core)
            await nursery.start(
                functools.partial(
                    run_link_supervisor, core, pump, fanout, wg_sock, wakeups, poke,
                    sampler=sampler,
                )
            )  # fmt: skip
            nursery.start_soon(run_resolver, core)
            if reloader is not None:

                async def apply(section: ClientConfig) -> None:
                    await check_destinations(core.config, section)
                    core.apply_config(section, time.monotonic())

                reloader.attach(apply)
            if handover is not None and handover.predecessor_pid is not None:
                await wait_for_paths(core, fanout)
            await start_dashboard_and_report(
                nursery,
                core,
                config,
                logger,
                f"client listening on {config.listenAddr} for WireGuard, "
                f"relaying to {config.dstAddr}",
                task_status,
                reloader,
                handover,
            )


async def wait_for_paths(core: ClientCore, fanout: Fanout, timeout_s: float = PATHS_S) -> None:
    """Until every path the core wants carries copies (or `timeout_s`): a successor that took
    WireGuard's datagrams before its uplink sockets exist would drop them."""
    with trio.move_on_after(timeout_s):
        while len(fanout.targets) < len(core.wanted()):  # noqa: ASYNC110 (once, at a handover)
            await trio.sleep(0.01)
    if len(fanout.targets) < len(core.wanted()):
        logger.warning(
            "taking over with %d of %d paths carrying", len(fanout.targets), len(core.wanted())
        )
