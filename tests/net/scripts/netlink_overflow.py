"""Run inside a fresh network namespace (as root): force the netlink watcher's socket to overflow
and check that it re-dumps and converges. Prints one JSON line with what it saw."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from functools import partial

import trio

from engarde.config import ClientConfig
from engarde.core.client import ClientCore
from engarde.net.netlink import run_netlink_watcher

N = 40


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def main() -> dict[str, object]:
    capture = Capture()
    logging.getLogger("engarde").addHandler(capture)
    logging.getLogger("engarde").setLevel(logging.DEBUG)
    core = ClientCore(ClientConfig(listenAddr="127.0.0.1:1", dstAddr="127.0.0.1:2"))
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(run_netlink_watcher, core, rcvbuf=2048))
        # Block the trio thread while the kernel emits far more than 2 KiB of events.
        script = "".join(
            f"link add dum{i} type veth peer name dump{i}\naddr add 10.77.{i}.2/24 dev dum{i}\n"
            f"link set dum{i} up\nlink set dump{i} up\n"
            for i in range(N)
        )
        # Blocking on purpose: the events pile up while the watcher cannot read them.
        subprocess.run(["ip", "-batch", "-"], input=script, text=True, check=True)  # noqa: ASYNC221
        time.sleep(0.5)  # noqa: ASYNC251
        deadline = trio.current_time() + 10
        while trio.current_time() < deadline:
            await trio.sleep(0.1)
            if len(core.wanted()) == N:
                break
        nursery.cancel_scope.cancel()
    return {
        "overflow_logged": any("ENOBUFS" in line for line in capture.lines),
        "wanted": sorted(plan.source_ip for plan in core.wanted().values()),
    }


print(json.dumps(trio.run(main)))
