"""run_client: the client's nursery tree (see docs/architecture.md).

run_client
├─ pump               the data path's thread (engarde.net.pump), one epoll over the hot sockets:
│                       WireGuard -> every uplink socket (non-blocking sends)
│                       each uplink socket -> WireGuard
├─ netlink watcher    kernel link/address events -> core -> supervisor wake-up
├─ link supervisor    core.wanted() vs running uplinks; one task per uplink
│   └─ uplink task    opens its socket, hands it to the pump, takes it back and closes it
└─ dashboard          optional (webManager)
"""

from __future__ import annotations

import logging
import time

import trio

from engarde.config import ClientConfig
from engarde.core.client import ClientCore
from engarde.net.netlink import run_netlink_watcher
from engarde.net.pump import Pump, run_pump
from engarde.net.ready import start_dashboard_and_report
from engarde.net.sockets import open_listen_socket
from engarde.net.uplinks import Fanout, run_link_supervisor, wake_channel, wireguard_handler

logger = logging.getLogger(__name__)


async def run_client(
    config: ClientConfig, *, task_status: trio.TaskStatus[ClientCore] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the client until cancelled. Raises SocketSetupError / NetlinkError at start-up."""
    core = ClientCore(config, now=time.monotonic())
    poke, wakeups = wake_channel()
    core.on_change = poke
    wg_sock = open_listen_socket(config.listenAddr, what="client.listenAddr")
    fanout = Fanout()
    pump = Pump()
    pump.register(wg_sock, wireguard_handler(wg_sock, core, fanout))

    with wg_sock:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_pump, pump)
            await nursery.start(run_netlink_watcher, core)
            await nursery.start(run_link_supervisor, core, pump, fanout, wg_sock, wakeups, poke)
            await start_dashboard_and_report(
                nursery,
                core,
                config,
                logger,
                f"client listening on {config.listenAddr} for WireGuard, "
                f"relaying to {config.dstAddr}",
                task_status,
            )
