"""The live page in a real browser: headless Chromium against a real engarde client.

A lab (two namespaces, two veth uplinks) runs ``python -m engarde server`` in the server namespace
in front of a dedup UDP echo, and ``python -m engarde client`` with its dashboard on
127.0.0.1:8080 in the client namespace, where a UDP sender plays WireGuard. Chromium runs in the
client namespace too and is driven through the Chrome DevTools Protocol over
``--remote-debugging-pipe`` (fds 3 and 4), so the test needs no network path into the namespace
and no extra Python package.

The test sees both uplinks active with traffic on their plots, sees one marked "went quiet" while
it is blackholed, clicks "Exclude" on one and sees
it become excluded (page and API), is asked to confirm before excluding the last active link
(and declining keeps it), then stops the engarde client and sees the "connection lost" banner.
Each link card shows what its copies are worth (share of first arrivals, loss, lag, datagrams
saved) and their plot. It also opens the server's dashboard (through the uplinks) and sees both
client addresses grouped under one client with its WireGuard session.
Screenshots go to the test's tmp_path and to /tmp/engarde-dashboard*.png.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import re
import select
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, stop_process

pytestmark = pytest.mark.netns

CHROMIUM = Path("/usr/bin/chromium")
WEB_PORT = 8080
SERVER_WEB_PORT = 8081  # the engarde server's dashboard, reached through the uplinks
USER, PASSWORD = "operator", "studio-secret"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
TIMEOUT_S = 20.0
SHOTS = Path("/tmp")


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{CHROMIUM} is missing on CI (apt-get install chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} not installed (Debian package chromium)")


# ---- a minimal CDP client over --remote-debugging-pipe ------------------------------------


class CDPError(RuntimeError):
    pass


class CDP:
    """Chrome DevTools Protocol over a pipe: JSON messages separated by NUL bytes.

    ``call`` sends a command and reads until its answer, handing events to ``on_event``
    handlers meanwhile (a confirm() dialog blocks the click that opened it until handled).
    """

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self._out = to_browser
        self._in = from_browser
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {}
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None) -> int:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data) :]
        return self._next_id

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout_s: float = TIMEOUT_S
    ) -> dict[str, Any]:
        wanted = self.send(method, params)
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._read(deadline, method)
            if message.get("id") == wanted:
                if "error" in message:
                    raise CDPError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)
                handler = self.handlers.get(message["method"])
                if handler is not None:
                    handler(message.get("params", {}))

    def _read(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError(f"no answer to {waiting_for} from chromium")
            ready, _, _ = select.select([self._in], [], [], left)
            if ready:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise CDPError("chromium closed the DevTools pipe")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise CDPError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout_s: float = TIMEOUT_S) -> Any:
        deadline = time.monotonic() + timeout_s
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        while True:
            value = self.evaluate(guarded)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {expression}")
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        """A real mouse click (pressed + released) at the middle of the element."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            self.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
            )

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(data["data"]))


@contextlib.contextmanager
def chromium(lab: Lab | None, profile: Path, log: Path) -> Iterator[CDP]:
    """Headless Chromium in the lab's client namespace (with ``lab`` None: in this process's,
    as a browser on the machine), DevTools on fds 3 (in) and 4 (out)."""
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    libc = ctypes.CDLL(None, use_errno=True)

    def child_setup() -> None:
        os.dup2(to_browser_r, 3)
        os.dup2(from_browser_w, 4)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: never outlive the test

    argv = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--disable-quic",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--mute-audio",
        "--remote-debugging-pipe",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    options: dict[str, Any] = {
        "stdin": subprocess.DEVNULL,
        "stderr": subprocess.STDOUT,
        "pass_fds": (3, 4),
        "preexec_fn": child_setup,
    }
    with log.open("wb") as out:
        if lab is None:
            proc = subprocess.Popen(argv, stdout=out, start_new_session=True, **options)
        else:
            proc = lab.popen(lab.client_ns, *argv, stdout=out, **options)
    os.close(to_browser_r)
    os.close(from_browser_w)
    cdp = CDP(to_browser_w, from_browser_r)
    try:
        yield cdp
    finally:
        with contextlib.suppress(OSError, CDPError):
            cdp.send("Browser.close")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
        if lab is None:
            stop_process(proc)
        else:
            lab.stop(proc)
        os.close(to_browser_w)
        os.close(from_browser_r)


# ---- the engarde side ------------------------------------------------------------------------


def start_engarde(lab: Lab, workdir: Path) -> tuple[subprocess.Popen[Any], Path]:
    """Echo + engarde server in the server namespace, engarde client (with its dashboard) and a
    UDP sender in the client namespace. Returns the client process and its log."""
    (workdir / "engarde.yml").write_text(
        textwrap.dedent(
            f"""\
            server:
              description: "studio hub"
              listenAddr: "0.0.0.0:59402"
              dstAddr: "127.0.0.1:7000"
              webManager:
                listenAddr: "0.0.0.0:{SERVER_WEB_PORT}"
                username: "{USER}"
                password: "{PASSWORD}"
            client:
              description: "studio OB van"
              listenAddr: "127.0.0.1:59401"
              dstAddr: "{lab.service_addr}:59402"
              interfaceLabels:
                up0: "Fiber"
                up1: "4G dongle"
              webManager:
                listenAddr: "127.0.0.1:{WEB_PORT}"
                username: "{USER}"
                password: "{PASSWORD}"
            """
        )
    )
    logs = {name: workdir / f"{name}.log" for name in ("echo", "server", "client", "sender")}

    def start(ns: str, name: str, *args: str) -> subprocess.Popen[Any]:
        with logs[name].open("wb") as out:
            return lab.popen_python(ns, *args, stdout=out, stderr=subprocess.STDOUT)

    start(lab.server_ns, "echo", "-m", "lab.udp_tools", "echo", "--listen", "127.0.0.1:7000")
    start(lab.server_ns, "server", "-m", "engarde", "server", str(workdir / "engarde.yml"))
    client = start(lab.client_ns, "client", "-m", "engarde", "client", str(workdir / "engarde.yml"))
    wait_for_api(lab, client, logs["client"])
    start(
        lab.client_ns,
        "sender",
        "-m",
        "lab.udp_tools",
        "send",
        "--to",
        "127.0.0.1:59401",
        "--count",
        "1000000",
        "--interval-ms",
        "20",
        "--size",
        "1024",
        "--wg-shape",
    )
    return client, logs["client"]


def api_get(lab: Lab, path: str) -> Any:
    """GET a dashboard path from inside the client namespace (where it listens)."""
    script = (
        "import sys, urllib.request as u; "
        f"r = u.Request('http://127.0.0.1:{WEB_PORT}{path}', headers={{'Authorization': "
        f"'{AUTH}'}}); sys.stdout.write(u.urlopen(r, timeout=5).read().decode())"
    )
    return json.loads(lab.run(lab.client_ns, "python3", "-c", script).stdout)


def wait_for_api(lab: Lab, proc: subprocess.Popen[Any], log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"engarde client exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(Exception):
            doc = api_get(lab, "/api/v1/get-list")
            if [i["status"] for i in doc["interfaces"]] == ["active", "active"]:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"dashboard not ready: {log.read_text()[-3000:]}")
        time.sleep(0.2)


def status_of(cdp: CDP, name: str) -> Any:
    return cdp.evaluate(
        f"(() => {{ const c = document.querySelector('article[data-key=\"{name}\"]');"
        " return c && {status: c.dataset.status, pill: c.querySelector('.status').textContent,"
        " button: c.querySelector('button.action').textContent}; })()"
    )


# ---- the test --------------------------------------------------------------------------------


def test_dashboard_in_headless_chromium(make_lab: Callable[[int], Lab], tmp_path: Path) -> None:
    require_chromium()
    lab = make_lab(2)
    client, client_log = start_engarde(lab, lab.workdir)
    with chromium(lab, tmp_path / "profile", tmp_path / "chromium.log") as cdp:
        cdp.call("Target.setDiscoverTargets", {"discover": False})
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        cdp.session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Network"):
            cdp.call(f"{domain}.enable")
        cdp.call("Network.setExtraHTTPHeaders", {"headers": {"Authorization": AUTH}})
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1100, "height": 760, "deviceScaleFactor": 1, "mobile": False},
        )
        cdp.call("Page.navigate", {"url": f"http://127.0.0.1:{WEB_PORT}/"})

        # the page shows both links, live, carrying traffic
        cdp.wait_for("document.querySelectorAll('article.card').length === 2", "two link cards")
        cdp.wait_for("document.getElementById('conn').textContent === 'live'", "live connection")
        for name, label in (("up0", "Fiber"), ("up1", "4G dongle")):
            assert status_of(cdp, name) == {
                "status": "active",
                "pill": "active",
                "button": f"Exclude {name}",
            }
            card = f'article[data-key="{name}"]'
            assert cdp.evaluate(f"document.querySelector('{card} .label').textContent") == label
        cdp.wait_for(
            "[...document.querySelectorAll('.peak')].every(e => e.textContent.startsWith('peak'))",
            "traffic on every sparkline",
        )
        assert cdp.evaluate("document.getElementById('banner').hidden") is True

        # what each link's copies are worth: the server's replies arrive over both uplinks
        cdp.wait_for(
            "[...document.querySelectorAll('article.card .qpeak')]"
            ".every(e => e.textContent.startsWith('peak loss'))",
            "copy figures on every link's quality plot",
        )
        quality = cdp.evaluate(
            "Object.fromEntries([...document.querySelectorAll('article.card')]"
            ".map(c => [c.dataset.key, {share: c.querySelector('.q-share').textContent,"
            " loss: c.querySelector('.q-loss').textContent,"
            " lag: c.querySelector('.q-lag').textContent,"
            " saved: c.querySelector('.q-saved').textContent,"
            " badge: c.querySelector('.badge-drop').hidden}]))"
        )
        api_links = {x["name"]: x["quality"] for x in api_get(lab, "/api/v2/status")["links"]}
        for name in ("up0", "up1"):
            shown = quality[name]
            assert shown["share"].endswith(")") and "%" in shown["share"], shown
            assert "total" in shown["loss"], shown
            assert shown["lag"].startswith(("p50", "never late")), shown
            assert "since start" in shown["saved"], shown
            assert shown["badge"] is True, "not idle for an hour"
            assert api_links[name]["won"] + api_links[name]["late"] > 0, api_links
        shares = [api_links[name]["firstSharePct"] or 0.0 for name in ("up0", "up1")]
        assert sum(shares) == pytest.approx(100.0, abs=0.2), api_links
        summary = cdp.evaluate("document.getElementById('summary').textContent")
        assert "dedup" in summary and "copies dropped" in summary, summary
        # every path of a link and its family
        paths = cdp.evaluate(
            "document.querySelector('article[data-key=\"up0\"] .paths dd').textContent"
        )
        assert paths == f"{lab.uplink(0).client_ip} (IPv4, active)", paths
        cdp.screenshot(tmp_path / "dashboard-before.png")

        # up1 silently drops everything (a dead modem): it "went quiet" while up0 still hears
        up1 = "document.querySelector('article[data-key=\"up1\"]')"
        lab.blackhole(1)
        cdp.wait_for(f"{up1}.classList.contains('quiet')", "up1 marked quiet")
        assert cdp.evaluate(f"{up1}.querySelector('.warn').textContent").startswith("went quiet")
        assert not cdp.evaluate(
            "document.querySelector('article[data-key=\"up0\"]').classList.contains('quiet')"
        )
        quiet = tmp_path / "dashboard-quiet.png"
        cdp.screenshot(quiet)
        shutil.copyfile(quiet, SHOTS / "engarde-dashboard-quiet.png")
        lab.blackhole(1, on=False)
        cdp.wait_for(f"!{up1}.classList.contains('quiet')", "up1 heard again")

        # exclude up1 with a real click: no confirmation (up0 is still active)
        dialogs: list[dict[str, Any]] = []

        def on_dialog(params: dict[str, Any]) -> None:
            dialogs.append(params)
            cdp.send("Page.handleJavaScriptDialog", {"accept": False})

        cdp.handlers["Page.javascriptDialogOpening"] = on_dialog
        cdp.click('article[data-key="up1"] button.action')
        cdp.wait_for(
            "document.querySelector('article[data-key=\"up1\"]').dataset.status === 'excluded'",
            "up1 shown excluded",
        )
        assert status_of(cdp, "up1") == {
            "status": "excluded",
            "pill": "excluded",
            "button": "Include up1",
        }
        assert not dialogs
        statuses = {i["name"]: i["status"] for i in api_get(lab, "/api/v1/get-list")["interfaces"]}
        assert statuses == {"up0": "active", "up1": "excluded"}
        in_page = cdp.evaluate(
            "fetch('api/v1/get-list').then(r => r.json())"
            ".then(d => d.interfaces.map(i => i.name + ':' + i.status).join(' '))"
        )
        assert in_page == "up0:active up1:excluded"

        # up0 is now the last active link: excluding it asks first; declining keeps it
        cdp.click('article[data-key="up0"] button.action')
        assert len(dialogs) == 1
        assert dialogs[0]["type"] == "confirm"
        assert "last active link" in dialogs[0]["message"]
        time.sleep(1.5)  # a wrongly sent command would show up by now (pushed at once)
        assert status_of(cdp, "up0")["status"] == "active"
        statuses = {i["name"]: i["status"] for i in api_get(lab, "/api/v1/get-list")["interfaces"]}
        assert statuses == {"up0": "active", "up1": "excluded"}
        cdp.wait_for(
            "document.querySelector('article[data-key=\"up0\"] .peak').textContent"
            ".startsWith('peak')",
            "up0 still carrying traffic",
        )
        shot = tmp_path / "dashboard.png"
        cdp.screenshot(shot)
        shutil.copyfile(shot, SHOTS / "engarde-dashboard.png")

        # phone-sized screen
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
        )
        cdp.wait_for(
            "document.querySelector('article.card').getBoundingClientRect().width < 390",
            "one column on a phone",
        )
        assert cdp.evaluate("document.documentElement.scrollWidth <= 390"), "no sideways scroll"
        phone = tmp_path / "dashboard-phone.png"
        cdp.screenshot(phone)
        shutil.copyfile(phone, SHOTS / "engarde-dashboard-phone.png")

        # the server's dashboard (through the uplinks): the client addresses, no buttons
        server_url = f"http://{lab.service_addr}:{SERVER_WEB_PORT}/"
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1100, "height": 760, "deviceScaleFactor": 1, "mobile": False},
        )
        cdp.call("Page.navigate", {"url": server_url})
        cdp.wait_for("document.body.dataset.role === 'server'", "the server's page")
        cdp.wait_for(
            "document.querySelectorAll("
            "'section.group article.card[data-status=\"alive\"]').length === 2",
            "two client addresses alive, under their client",
        )
        group = cdp.evaluate(
            "(() => { const g = document.querySelectorAll('section.group');"
            " return {count: g.length, name: g[0].querySelector('.group-name').textContent,"
            " sessions: g[0].querySelector('.sessions').textContent,"
            " pill: g[0].querySelector('.pill').textContent,"
            " copies: g[0].querySelector('.group-copies').textContent}; })()"
        )
        assert group["count"] == 1, group  # one field kit: both uplinks are one client
        assert group["name"].startswith("client #"), group
        assert re.match(r"[0-9a-f]{8}", group["sessions"]), group
        assert group["pill"] == "2 of 2 alive", group
        assert "since start" in group["copies"], group
        cdp.wait_for(
            "[...document.querySelectorAll('section.group .q-share')]"
            ".some(e => e.textContent.includes('%'))",
            "first-arrival shares of the client's addresses",
        )
        assert cdp.evaluate("document.getElementById('pending').hidden") is True
        assert cdp.evaluate("document.querySelectorAll('button').length") == 0
        server_shot = tmp_path / "dashboard-server.png"
        cdp.screenshot(server_shot)
        shutil.copyfile(server_shot, SHOTS / "engarde-dashboard-server.png")
        cdp.call("Page.navigate", {"url": f"http://127.0.0.1:{WEB_PORT}/"})
        cdp.wait_for("document.getElementById('conn').textContent === 'live'", "back on the client")

        # engarde goes away: a clear banner
        lab.stop(client)
        cdp.wait_for("!document.getElementById('banner').hidden", "the connection-lost banner", 15)
        banner = cdp.evaluate("document.getElementById('banner').textContent")
        assert "lost" in banner or "No news" in banner
        lost = tmp_path / "dashboard-lost.png"
        cdp.screenshot(lost)
        shutil.copyfile(lost, SHOTS / "engarde-dashboard-lost.png")
    assert "Traceback" not in client_log.read_text()
