"""The dashboard as the command line runs it (the server role: loopback only, no root needed):
a taken port is one line on stderr and exit code 1, and Ctrl-C ends the process promptly even
with a live page connected."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lab import REPO_ROOT
from tests.web.helpers import free_port


def write_config(path: Path, web_port: int) -> Path:
    path.write_text(
        json.dumps(  # JSON is YAML
            {
                "server": {
                    "listenAddr": f"127.0.0.1:{free_port()}",
                    "dstAddr": f"127.0.0.1:{free_port()}",
                    "webManager": {"listenAddr": f"127.0.0.1:{web_port}"},
                }
            }
        )
    )
    return path


def start_server(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "engarde", "server", str(config)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_port_taken_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start_server(write_config(tmp_path / "engarde.yml", port))
        try:
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"engarde server: cannot serve the dashboard on 127.0.0.1:{port}: "
        "Address already in use [EADDRINUSE]"
    )


def test_ctrl_c_with_a_live_page_exits_promptly(tmp_path: Path) -> None:
    port = free_port()
    proc = start_server(write_config(tmp_path / "engarde.yml", port))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                page = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except ConnectionRefusedError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the dashboard never came up"
                time.sleep(0.1)
        with page:
            page.sendall(b"GET /api/v2/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert page.recv(65536).startswith(b"HTTP/1.1 200")
            start = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=10)
            took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert took < 3.0  # graceful 0.5 s for the web side, well under a hang


def test_sigterm_while_the_dashboard_starts_exits(tmp_path: Path) -> None:
    """The dashboard starts after the "listening" line: a SIGTERM right then (systemd stopping
    a unit that just became ready) cancels hypercorn while it starts. It used to wait for it
    forever (a shielded child of a cancelled nursery.start)."""
    for attempt in range(3):
        proc = start_server(write_config(tmp_path / "engarde.yml", free_port()))
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                if "server listening on" in line:
                    break
            time.sleep(0.05 * attempt)
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr
