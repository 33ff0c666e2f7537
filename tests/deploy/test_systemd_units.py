"""examples/systemd: `systemd-analyze verify` accepts both units (no warning either), their
hardening scores as systemd rates it, and they keep the settings docs/operations.md relies on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lab import REPO_ROOT

UNITS = REPO_ROOT / "examples" / "systemd"
ROLES = ("client", "server")


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        reason = "systemd-analyze missing (Debian package systemd: scripts/install-system-deps.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}, and CI=true", pytrace=False)
        pytest.skip(reason)
    return tool


def _copy_with_stub(tmp_path: Path, text: str, role: str) -> Path:
    """verify checks that ExecStart= is executable: point it at a stub instead of an install."""
    stub = tmp_path / f"engarde-{role}"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / f"engarde-{role}.service"
    unit.write_text(text.replace(f"/usr/local/bin/engarde-{role}", str(stub)))
    return unit


def _verify(tool: str, *units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "verify", *map(str, units)], capture_output=True, text=True, timeout=120,
        cwd=units[0].parent,
    )  # fmt: skip


def test_units_verify_cleanly(tmp_path: Path) -> None:
    tool = _analyze()
    units = [
        _copy_with_stub(tmp_path, (UNITS / f"engarde-{r}.service").read_text(), r) for r in ROLES
    ]
    done = _verify(tool, *units)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.strip() == "", f"systemd-analyze verify warned:\n{done.stderr}"


def test_verify_catches_a_mistake(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is reported."""
    tool = _analyze()
    text = (UNITS / "engarde-client.service").read_text()
    unit = _copy_with_stub(tmp_path, text.replace("NoNewPrivileges=", "NoNewPrivilege="), "client")
    done = _verify(tool, unit)
    assert "NoNewPrivilege" in done.stderr, done.stdout + done.stderr


@pytest.mark.parametrize("role", ROLES)
def test_hardening(role: str, tmp_path: Path) -> None:
    tool = _analyze()
    text = (UNITS / f"engarde-{role}.service").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z]\w*=", line)
    )
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "all"  # the restart helper hands MAINPID over
    assert settings["Restart"] == "on-failure"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["ProtectSystem"] == "strict"
    assert settings["NoNewPrivileges"] == "yes"
    caps = set(settings["CapabilityBoundingSet"].split())
    assert caps <= {"CAP_NET_RAW", "CAP_NET_ADMIN"}, caps
    assert ("CAP_NET_RAW" in caps) == (role == "client")  # SO_BINDTODEVICE on the uplinks
    assert set(settings["AmbientCapabilities"].split()) == caps
    unit = _copy_with_stub(tmp_path, text, role)
    done = subprocess.run(
        [tool, "security", "--offline=yes", str(unit)], capture_output=True, text=True,
        timeout=120, cwd=tmp_path,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout + done.stderr)
    assert found, done.stdout[-3000:] + done.stderr[-3000:]
    # 0 is a unit that can do nothing, 10 is root with everything; "OK" is below 4.
    assert float(found[1]) <= 3.0, done.stdout[-6000:]
