"""The netlink watcher against a real kernel: resync after the kernel drops events."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lab import Lab

SCRIPT = Path(__file__).parent / "scripts" / "netlink_overflow.py"


def test_overflow_triggers_a_redump_and_converges(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = make_lab(0)
    out = lab.run(lab.client_ns, sys.executable, str(SCRIPT), timeout_s=60)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["overflow_logged"], "the 2 KiB socket should have overflowed (ENOBUFS)"
    assert result["wanted"] == sorted(f"10.77.{i}.2" for i in range(40))
