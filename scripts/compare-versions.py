"""Print where the installed distributions differ from a pip constraints file (make test-latest)."""

import re
import sys
from importlib import metadata


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(path: str) -> None:
    pinned = {}
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for line in lines:
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if m:
            pinned[norm(m[1])] = m[2]
    installed = {norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    changed = [
        f"  {name}: {pinned[name]} -> {version}"
        for name, version in sorted(installed.items())
        if name in pinned and pinned[name] != version and name != "setuptools"  # build-only pin
    ]
    new = [
        f"  {name}: {v} (not in {path})"
        for name, v in sorted(installed.items())
        if name not in pinned and name not in ("pip", "engarde", "setuptools")
    ]
    print(f"newest releases vs {path}: {len(changed)} changed, {len(new)} new")
    print("\n".join(changed + new))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "constraints.txt")
