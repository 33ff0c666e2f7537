"""The original Go engarde as a test peer: finding its binaries, running them in a lab's
namespaces, the engarde.yml both implementations read, and HTTP calls made the way the OpenWrt
LuCI app makes them (wget).

The binaries are a test dependency only, never shipped: ``../shared/anchors/engarde-go/bin``
next to the repository, or the directory in ``ENGARDE_GO_BIN``. Without them a test that needs
them is skipped with the reason; under ``CI=true`` that is a failure instead, so CI cannot
silently stop comparing with the original.

Facts about the original these helpers rely on (its README there): IPv4 only, it polls the
interface list once a second, it logs ``Listening on HOST:PORT`` once its UDP socket is bound
and ``Management webserver listening on HOST:PORT`` for the web manager, it answers API errors
with a 500 and a text body.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab import REPO_ROOT, Lab
from tests.net.helpers import Engarde, LogFile, require_tool

GO_BIN_DEFAULT = REPO_ROOT.parent / "shared" / "anchors" / "engarde-go" / "bin"


def go_bin_dir() -> Path:
    """Where the Go binaries are: ``$ENGARDE_GO_BIN`` or ``../shared/anchors/engarde-go/bin``."""
    return Path(os.environ.get("ENGARDE_GO_BIN") or GO_BIN_DEFAULT)


def go_binary(name: str) -> Path:
    """The path of ``engarde-client`` or ``engarde-server``; skips (fails on CI) if missing."""
    path = go_bin_dir() / name
    if path.is_file() and os.access(path, os.X_OK):
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(
            f"the Go engarde is required on CI (CI=true): {path} is missing or not executable "
            "(set ENGARDE_GO_BIN to the directory holding engarde-client and engarde-server)",
            pytrace=False,
        )
    pytest.skip(
        f"the Go engarde is not here: {path} (a test dependency, see tests/e2e/go_engarde.py)"
    )


_go_counter = iter(range(1_000_000))


def start_go(lab: Lab, role: str, config: Path, *, ns: str | None = None) -> Engarde:
    """Start the Go ``engarde-ROLE config`` in ``ns`` (default: the role's namespace) and wait
    until its UDP socket is bound ("Listening on"). Stopped with the lab (by PID)."""
    binary = go_binary(f"engarde-{role}")
    ns = ns or (lab.client_ns if role == "client" else lab.server_ns)
    path = lab.workdir / f"go-{role}-{next(_go_counter)}.log"
    with path.open("wb") as out:
        proc = lab.popen(
            ns,
            str(binary),
            str(config),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    log = LogFile(path, proc)
    log.wait_for(r"level=info msg=\"Listening on ")
    return Engarde(f"go-{role}", proc, log)


# ---------------------------------------------------------------------------------------------
# engarde.yml with every key the original knows


def full_config(
    lab: Lab,
    *,
    client_web: str,
    server_web: str,
    server_dst: str,
    excluded: list[str],
    labels: dict[str, str],
    auth: tuple[str, str] | None = None,
    server_port: int = 59402,
    client_listen: str = "127.0.0.1:59401",
) -> dict[str, Any]:
    """Both sections with every key the Go engarde reads (values both implementations accept:
    exact interface names, integer ``writeTimeout`` in ms and ``clientTimeout`` in s).

    ``dstOverrides`` sends uplink 1's copies to the server through its own subnet's server end
    (a real destination, so the override is in use, not decoration).
    """
    manager = {"listenAddr": client_web}
    server_manager = {"listenAddr": server_web}
    if auth is not None:
        for section in (manager, server_manager):
            section["username"], section["password"] = auth
    return {
        "client": {
            "description": "field kit (interop)",
            "listenAddr": client_listen,
            "dstAddr": f"{lab.service_addr}:{server_port}",
            "writeTimeout": 10,
            "excludedInterfaces": excluded,
            "interfaceLabels": labels,
            "dstOverrides": [
                {"ifName": "up1", "dstAddr": f"{lab.uplink(1).server_ip}:{server_port}"}
            ],
            "webManager": manager,
        },
        "server": {
            "description": "hub (interop)",
            "listenAddr": f"0.0.0.0:{server_port}",
            "dstAddr": server_dst,
            "clientTimeout": 30,
            "writeTimeout": 10,
            "webManager": server_manager,
        },
    }


# ---------------------------------------------------------------------------------------------
# HTTP the way the LuCI app does it


@dataclass(frozen=True)
class Answer:
    """One HTTP answer as wget saw it."""

    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names, last value wins
    exit_code: int = 0  # wget's: 0 ok, 8 the server answered an error status

    def __str__(self) -> str:
        return f"{self.status} {self.headers.get('content-type', '?')} {self.body[:300]!r}"


_STATUS = re.compile(r"^\s*HTTP/\d(?:\.\d)? (\d{3})", re.MULTILINE)
_HEADER = re.compile(r"^\s+([A-Za-z0-9-]+): (.*)$", re.MULTILINE)


def wget(
    lab: Lab,
    ns: str,
    url: str,
    *,
    post_data: str | None = None,
    auth: tuple[str, str] | None = None,
    host: str | None = None,
) -> Answer:
    """What the LuCI app's rpcd script runs: ``wget -q -O - -T 3
    [--header=Authorization: Basic ...] [--post-data=BODY] URL``, inside ``ns``.

    ``-S --content-on-error`` are added only to observe the answer (status, headers, the body
    of an error); they change nothing in the request. ``host`` replaces the Host header (LuCI
    never does: a test of what a browser led astray by DNS rebinding would send).
    """
    require_tool("wget")
    argv = ["wget", "-q", "-O", "-", "-T", "3"]
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        argv.append(f"--header=Authorization: Basic {token}")
    if host is not None:
        argv.append(f"--header=Host: {host}")
    if post_data is not None:
        argv.append(f"--post-data={post_data}")
    argv += ["-S", "--content-on-error", url]
    proc = lab.run(ns, *argv, check=False, timeout_s=15)
    statuses = _STATUS.findall(proc.stderr)
    if not statuses:
        pytest.fail(f"wget {url}: no HTTP answer (exit {proc.returncode}): {proc.stderr[-500:]}")
    headers = {name.lower(): value.strip() for name, value in _HEADER.findall(proc.stderr)}
    return Answer(int(statuses[-1]), proc.stdout, headers, proc.returncode)
