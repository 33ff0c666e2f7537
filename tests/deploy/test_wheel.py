"""A built wheel, installed with pip into a fresh venv (as a user would: `pip install
engarde-*.whl`, dependencies at the tested versions of constraints.txt), gives the three
commands of the original's layout and carries the dashboard's static files."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lab import REPO_ROOT

pytestmark = pytest.mark.slow

STATIC = sorted(p.name for p in (REPO_ROOT / "engarde" / "web" / "static").iterdir())


def run(*cmd: str | Path, cwd: Path, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{output}"
    return done


def test_wheel_installs_commands_and_static_files(tmp_path: Path) -> None:
    assert STATIC, "no static files in the source tree"
    # Build from a copy of the tracked files, so the check sees what a clone would build.
    src = tmp_path / "src"
    files = run("git", "ls-files", "-z", cwd=REPO_ROOT).stdout.split("\0")
    for name in filter(None, files):
        if (REPO_ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((REPO_ROOT / name).read_bytes())
    wheels = tmp_path / "wheels"
    constraints = REPO_ROOT / "constraints.txt"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels,
        "--build-constraint", constraints, src, cwd=tmp_path)  # fmt: skip
    (wheel,) = wheels.glob("engarde-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {f"engarde/web/static/{n}" for n in STATIC} <= names, sorted(names)
    assert not [n for n in names if n.startswith(("tests/", "lab/", "bench/"))], sorted(names)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    pip = venv / "bin" / "pip"
    run(pip, "install", "-q", "-c", constraints, wheel, cwd=tmp_path)

    # Outside the source tree: what runs is the installed package.
    where = run(venv / "bin" / "python", "-c",
                "import engarde, pathlib; print(pathlib.Path(engarde.__file__).parent)",
                cwd=tmp_path).stdout.strip()  # fmt: skip
    package = Path(where)
    assert package.is_relative_to(venv), package
    for name in STATIC:
        assert (package / "web" / "static" / name).stat().st_size > 0, name

    engarde = run(venv / "bin" / "engarde", "version", cwd=tmp_path).stdout
    assert engarde.startswith("engarde "), engarde
    version = engarde.split()[1]
    for role in ("client", "server"):
        out = run(venv / "bin" / f"engarde-{role}", "-v", cwd=tmp_path).stdout
        assert out.strip() == f"engarde-{role} {version}", out
    # The server starts from the installed package: check-config loads a config through it.
    config = tmp_path / "engarde.yml"
    config.write_text('server:\n  listenAddr: "127.0.0.1:59402"\n  dstAddr: "127.0.0.1:59301"\n')
    checked = run(venv / "bin" / "engarde", "check-config", config, "--role=server", cwd=tmp_path)
    assert "59402" in checked.stdout, checked.stdout
