"""The client runs as the systemd unit runs it: not root, with only the capabilities the unit
grants (examples/systemd/engarde-client.service: AmbientCapabilities, NoNewPrivileges,
MemoryDenyWriteExecute), and relays real WireGuard over every uplink. systemd itself is not there
in the lab: setpriv sets up the same user, capability sets and no_new_privs, and the kernel's
PR_SET_MDWE (tests/deploy/mdwe_exec.py) the memory protection: Python's ctypes (used by the
data path's recvmmsg/sendmmsg) must live with it. On kernels >= 5.7 the client also runs with
no capability at all (binding a socket to its uplink once needs none; the buffers fall back).
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lab import REPO_ROOT, Lab, ping
from tests.net.helpers import (
    CLIENT_LISTEN,
    Engarde,
    LogFile,
    server_section,
    start_server,
    wait_for_socket,
    wait_until,
    wireguard_client_section,
    write_config,
)

UNITS = REPO_ROOT / "examples" / "systemd"
MDWE_EXEC = Path(__file__).resolve().parent / "mdwe_exec.py"
WG_SERVER_PORT = 59301
NOBODY = 65534
CAP_BITS = {"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}


def unit_caps() -> list[str]:
    text = (UNITS / "engarde-client.service").read_text()
    found = re.search(r"^AmbientCapabilities=(.*)$", text, re.MULTILINE)
    assert found, "no AmbientCapabilities= in the client unit"
    return found[1].split()


def mdwe_works() -> bool:
    """The kernel has PR_SET_MDWE, and it refuses a writable and executable mapping after it."""
    probe = "import mmap; mmap.mmap(-1, 4096, prot=7)"  # PROT_READ|PROT_WRITE|PROT_EXEC
    done = subprocess.run([sys.executable, str(MDWE_EXEC), sys.executable, "-c", probe],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    if done.returncode == 3:
        return False  # kernel < 6.3
    assert "PermissionError" in done.stderr, f"W+X mapping allowed under MDWE: {done}"
    return True


def kernel_at_least(major: int, minor: int) -> bool:
    numbers = re.match(r"(\d+)\.(\d+)", platform.release())
    return numbers is not None and (int(numbers[1]), int(numbers[2])) >= (major, minor)


@pytest.mark.parametrize("caps", ["unit", "none"])
def test_client_as_unprivileged_user(lab: Lab, caps: str) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv missing (Debian package util-linux)")
    granted = unit_caps() if caps == "unit" else []
    if not granted and not kernel_at_least(5, 7):
        pytest.skip("kernel < 5.7: SO_BINDTODEVICE needs CAP_NET_RAW")
    config = write_config(
        lab,
        client=wireguard_client_section(lab),
        server=server_section(f"127.0.0.1:{WG_SERVER_PORT}", wireguard_only=True),
    )
    # The unprivileged process must read its config: a world-readable copy (the unit's user
    # reads /etc/engarde through its group).
    readable = Path(tempfile.mkdtemp(prefix="engarde-unit-"))
    try:
        readable.chmod(0o755)
        shutil.copy(config, readable / "engarde.yml")
        (readable / "engarde.yml").chmod(0o644)
        server = start_server(lab, config)
        names = ",".join(["-all", *(f"+{c.removeprefix('CAP_').lower()}" for c in granted)])
        log_path = lab.workdir / f"client-{caps}.log"
        mdwe: list[str] = []
        if (
            caps == "unit"
            and "\nMemoryDenyWriteExecute=yes" in (UNITS / "engarde-client.service").read_text()
        ):
            mdwe = [sys.executable, str(MDWE_EXEC)] if mdwe_works() else []
        with log_path.open("wb") as err:
            proc = lab.popen(
                lab.client_ns,
                *mdwe,
                "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                f"--inh-caps={names}", f"--ambient-caps={names}", f"--bounding-set={names}",
                "--no-new-privs",
                sys.executable, "-m", "engarde", "client",
                str(readable / "engarde.yml"), "--log-level", "debug",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                cwd=REPO_ROOT,
            )  # fmt: skip
        log = LogFile(log_path, proc)
        log.wait_for(r"client listening on ")
        for i in range(3):
            wait_for_socket(Engarde("client", proc, log), i)

        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{NOBODY}\s", status, re.MULTILINE), status
        cap_eff = re.search(r"^CapEff:\s+([0-9a-f]+)", status, re.MULTILINE)
        assert cap_eff, status
        effective = int(cap_eff[1], 16)
        assert effective == sum(1 << CAP_BITS[c] for c in granted), (hex(effective), granted)
        assert re.search(r"^NoNewPrivs:\s+1", status, re.MULTILINE), status

        wg = lab.start_wireguard(server_port=WG_SERVER_PORT, client_endpoint=CLIENT_LISTEN)

        def tunnel_up() -> bool:
            return ping(lab.client_ns, wg.server_ip, count=1, timeout_s=1).received == 1

        def state() -> str:
            return "\n".join([wg.show("client"), server.log.tail(), log.tail()])

        wait_until(tunnel_up, "the tunnel through the unprivileged client", timeout_s=30,
                   details=state)  # fmt: skip
        result = ping(lab.client_ns, wg.server_ip, count=20, interval_s=0.02)
        assert result.received == 20, f"{result}\n{state()}"
        assert "Traceback" not in log.text(), log.tail()
        assert lab.stop(proc) == 0, log.tail()
    finally:
        shutil.rmtree(readable, ignore_errors=True)
