"""``make demo DEMO_ARGS=--hold``, watched from the host as a person would.

The demo (examples/demo.py: namespaces, wireguard-go, engarde client and server, pings while
uplinks are cut) runs as a subprocess with ``--hold``. The test reads the dashboard URLs it
prints, fetches both dashboards from this process (the host's namespace, through the demo's host
links), and, in the browser test, opens the client's page in headless Chromium running in the
host's namespace too: it sees the three links active, sees one go down (idle, its reason on the
card) while the others carry the tunnel, takes a screenshot then, sees it come back, and opens the
server's page. Then SIGTERM (exit 143) or SIGINT as Ctrl-C sends it (exit 130), and nothing the
demo made is left: no namespace, no host link, no lock, no process in its namespaces, no
workdir.

Screenshots go to the test's tmp_path and to /tmp/engarde-demo-*.png; docs/demo-dashboard.png
(shown in README.md) is one of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import REPO_ROOT
from lab.host_link import LOCK_DIR
from tests.web.test_browser import CDP, chromium, require_chromium

pytestmark = pytest.mark.netns

DEMO = REPO_ROOT / "examples" / "demo.py"
START_S = 60.0  # demo start to the tunnel up: generous on a busy 2-CPU box
STOP_S = 30.0  # signal to exit, cleanup included
SHOTS = Path("/tmp")


class Demo:
    """The demo as a subprocess; its output is collected line by line by a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(DEMO), *args],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a Ctrl-C in the terminal of the test reaches only pytest
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.namespaces: set[str] = set()
        self.ns_inodes: set[int] = set()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self, last: int = 80) -> str:
        return "\n".join(self.lines[-last:])

    def wait_for(self, pattern: str, timeout_s: float = START_S) -> re.Match[str]:
        """The first output line matching ``pattern``; fails (with the output) on timeout or
        when the demo exits first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            for line in list(self.lines):
                if found := regex.search(line):
                    return found
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                if any(regex.search(line) for line in self.lines):
                    continue
                pytest.fail(
                    f"demo exited ({self.proc.returncode}) before {pattern!r}:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} from the demo after {timeout_s} s:\n{self.output()}")
            time.sleep(0.1)

    def urls(self) -> dict[str, str]:
        self.wait_for(r"server dashboard: http://")
        return dict(re.findall(r"(\w+) dashboard: (http://\S+)", "\n".join(self.lines)))

    def note_namespaces(self) -> None:
        """The demo's namespaces (``eg<its pid>...``) and their inodes, to look for leftovers."""
        for ns in demo_namespaces(self.proc.pid):
            self.namespaces.add(ns)
            with contextlib.suppress(OSError):
                self.ns_inodes.add(os.stat(f"/run/netns/{ns}").st_ino)

    def stop(self, signum: int) -> int:
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"demo still running {STOP_S} s after {signum!r}:\n{self.output()}")
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        """Last resort after a failed test: stop it, delete what it left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for ns in demo_namespaces(self.proc.pid):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def demo_namespaces(pid: int) -> set[str]:
    return {p.name for p in Path("/run/netns").glob(f"eg{pid}[a-z]*")}


def processes_in(inodes: set[int]) -> list[str]:
    """Processes whose network namespace is one of ``inodes`` (pid and command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ns = os.readlink(entry / "ns" / "net")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        match = re.fullmatch(r"net:\[(\d+)\]", ns)
        if match and int(match.group(1)) in inodes:
            found.append(f"{entry.name}: {cmdline}")
    return found


def host_links(third_octet: int) -> set[str]:
    return {p.name for p in Path("/sys/class/net").glob(f"egh{third_octet}s*")}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


@pytest.fixture
def start_demo() -> Iterator[Any]:
    demos: list[Demo] = []

    def start(*args: str) -> Demo:
        demo = Demo(*args)
        demos.append(demo)
        return demo

    try:
        yield start
    finally:
        for demo in demos:
            demo.kill()


def check_running(demo: Demo) -> tuple[dict[str, str], int]:
    """The URLs printed, both dashboards answering from the host; the host links' /24."""
    subnet = demo.wait_for(r"dashboards, for a browser on this machine \(172\.30\.(\d+)\.0/24\)")
    third_octet = int(subnet.group(1))
    urls = demo.urls()
    assert set(urls) == {"client", "server"}, demo.output()
    assert all(url.startswith("http://172.30.") for url in urls.values()), urls
    demo.wait_for(r"\] tunnel up")
    demo.note_namespaces()
    assert len(demo.namespaces) == 2, (demo.namespaces, demo.output())
    assert len(host_links(third_octet)) == 2, demo.output()

    client = get_json(urls["client"] + "api/v1/get-list")
    statuses = {i["name"]: i["status"] for i in client["interfaces"]}
    assert {statuses.get(f"up{i}") for i in range(3)} == {"active"}, client
    assert statuses.get("tohost") == "excluded", client  # the host link is never an uplink
    server = get_json(urls["server"] + "api/v2/status")
    assert server["type"] == "server", server
    assert "<html" in get_text(urls["client"]).lower()
    return urls, third_octet


def check_all_gone(demo: Demo, third_octet: int) -> None:
    assert demo.namespaces and demo.ns_inodes
    assert not demo_namespaces(demo.proc.pid), demo.output()
    assert not host_links(third_octet), demo.output()
    assert not (LOCK_DIR / f"172.30.{third_octet}.0.lock").exists()
    left = processes_in(demo.ns_inodes)
    assert not left, f"processes left in the demo's namespaces: {left}"
    workdirs = list(Path("/tmp").glob(f"engarde-lab-{demo.proc.pid}-*"))
    assert not workdirs, workdirs
    assert "demo: everything removed" in demo.output(), demo.output()


def test_hold_watched_in_a_browser_on_the_host_then_sigterm(
    start_demo: Any, tmp_path: Path
) -> None:
    require_chromium()
    demo: Demo = start_demo("--hold", "--pace", "2")
    urls, third_octet = check_running(demo)

    with chromium(None, tmp_path / "profile", tmp_path / "chromium.log") as cdp:
        open_page(cdp, urls["client"])
        cdp.wait_for("document.getElementById('conn').textContent === 'live'", "live connection")
        cdp.wait_for(
            "['up0', 'up1', 'up2'].every(n => document.querySelector("
            "`article[data-key=\"${n}\"]`).dataset.status === 'active')",
            "three active links",
        )
        cdp.wait_for(
            "[...document.querySelectorAll('.peak')].some(e => e.textContent.startsWith('peak'))",
            "traffic on the plots",
        )
        # the timeline cuts up0 first (link down, 2 * pace s after the pings start)
        down = "document.querySelector('article[data-key=\"up0\"]').dataset.status === 'idle'"
        cdp.wait_for(down, "up0 shown down", timeout_s=START_S)
        cards = cdp.evaluate(
            "Object.fromEntries([...document.querySelectorAll('article.card')]"
            ".map(c => [c.dataset.key, c.dataset.status]))"
        )
        assert cards["up0"] == "idle", cards
        assert "active" in (cards.get("up1"), cards.get("up2")), cards
        reason = "document.querySelector('article[data-key=\"up0\"] .reason').textContent"
        first_reason = cdp.evaluate(reason)
        shot = tmp_path / "demo-dashboard-first-cut.png"
        cdp.screenshot(shot)
        assert shot.stat().st_size > 10_000
        # ... restores it, and cuts it again later in the cycle, another way (carrier lost,
        # 14 * pace s after the pings start): by then the plots show the history of the cuts
        cdp.wait_for(
            "document.querySelector('article[data-key=\"up0\"]').dataset.status === 'active'",
            "up0 back",
            timeout_s=START_S,
        )
        demo.wait_for(r"restoring up0 \(link up\)", timeout_s=5)
        demo.wait_for(r"cutting up0 \(carrier lost", timeout_s=START_S)
        cdp.wait_for(down, "up0 shown down again", timeout_s=START_S)
        cdp.wait_for(
            "['up1', 'up2'].every(n => document.querySelector("
            "`article[data-key=\"${n}\"]`).dataset.status === 'active')",
            "the other two carrying the tunnel",
        )
        assert cdp.evaluate(reason) != first_reason, first_reason
        shot = tmp_path / "demo-dashboard.png"
        cdp.screenshot(shot)
        shutil.copyfile(shot, SHOTS / "engarde-demo-dashboard.png")

        open_page(cdp, urls["server"])
        cdp.wait_for("document.body.dataset.role === 'server'", "the server's page")
        cdp.wait_for(
            "document.querySelectorAll('section.group article.card[data-status=\"alive\"]')"
            ".length >= 2",
            "the client's addresses alive on the server's page",
        )
        server_shot = tmp_path / "demo-dashboard-server.png"
        cdp.screenshot(server_shot)
        shutil.copyfile(server_shot, SHOTS / "engarde-demo-dashboard-server.png")

    assert demo.stop(signal.SIGTERM) == 143, demo.output()
    assert "interrupted (SIGTERM)" in demo.output()
    check_all_gone(demo, third_octet)


def test_hold_reports_each_cycle_and_ctrl_c_removes_everything(start_demo: Any) -> None:
    demo: Demo = start_demo("--hold", "--pace", "0.5", "--clients", "1")
    _, third_octet = check_running(demo)
    report = demo.wait_for(r"^cycle 1: pings sent (\d+), lost (\d+)$")
    assert int(report.group(1)) > 0, demo.output()
    demo.wait_for(r"cycle 2: cutting up0")  # it goes on
    assert demo.proc.poll() is None
    assert demo.stop(signal.SIGINT) == 130, demo.output()  # what Ctrl-C sends
    held = demo.wait_for(r"held for (\d+) full cycle\(s\) and a part: pings sent (\d+), lost \d+")
    assert int(held.group(1)) >= 1 and int(held.group(2)) >= int(report.group(1))
    check_all_gone(demo, third_octet)


def open_page(cdp: CDP, url: str) -> None:
    """Navigate the (first) page target to ``url``, attaching to it on first use."""
    if cdp.session is None:
        cdp.call("Target.setDiscoverTargets", {"discover": False})
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        cdp.session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime"):
            cdp.call(f"{domain}.enable")
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1660, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )
    cdp.call("Page.navigate", {"url": url})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pace", "100"], "--pace must be within 0.5..20, got 100"),
        (["--pace", "0"], "--pace must be within 0.5..20, got 0"),
        (["--hold", "--pace", "20", "--interval-ms", "5"], "is too slow"),
        (["--interval-ms", "0"], "--interval-ms must be within 1..1000"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_made(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, str(DEMO), *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done
    assert message in done.stderr, done.stderr
    assert done.stdout == "", done.stdout  # no lab, no host link: argparse refused first
