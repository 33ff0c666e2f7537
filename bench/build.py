"""Compile the C load tools and baseline relay into bench/build/ (gitignored) with gcc -O2.

A binary is rebuilt when it is missing or older than its source. Failure raises BuildError with
gcc's output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
SOURCE_DIR = BENCH_DIR / "c"
BUILD_DIR = BENCH_DIR / "build"
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra"]

# binary name -> (sources, extra link flags)
PROGRAMS: dict[str, tuple[list[str], list[str]]] = {
    "udpgen": (["udpgen.c", "addr.c"], ["-lm"]),
    "relay": (["relay.c", "addr.c"], []),
}
HEADERS = ["addr.h"]  # a change to one rebuilds every program


class BuildError(RuntimeError):
    """gcc is missing or a program failed to compile."""


@dataclass(frozen=True)
class Tools:
    udpgen: str
    relay: str


def _build_one(name: str, sources: list[str], ldflags: list[str], force: bool) -> Path:
    out = BUILD_DIR / name
    srcs = [SOURCE_DIR / s for s in sources]
    newest = max(s.stat().st_mtime for s in [*srcs, *(SOURCE_DIR / h for h in HEADERS)])
    if not force and out.exists() and out.stat().st_mtime >= newest:
        return out
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BuildError("gcc not found: install it (Debian package gcc) to build the bench tools")
    BUILD_DIR.mkdir(exist_ok=True)
    # Compile to a private name and rename: another process (a test, a second bench) may be
    # building or running the same binary right now.
    tmp = BUILD_DIR / f".{name}.{os.getpid()}.tmp"
    argv = [gcc, *CFLAGS, "-o", str(tmp), *map(str, srcs), *ldflags]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"{' '.join(argv)} failed:\n{proc.stderr}")
    os.replace(tmp, out)
    return out


def build_tools(force: bool = False) -> Tools:
    """Build (if needed) every C program; return their absolute paths."""
    paths = {name: str(_build_one(name, srcs, ld, force)) for name, (srcs, ld) in PROGRAMS.items()}
    return Tools(**paths)
