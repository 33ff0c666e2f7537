"""Reading wg-quick configs (examples/wireguard) in tests: sections, the keys `wg setconf`
understands, and the wg-quick-only keys (Address, MTU, PostUp...) that it rejects."""

from __future__ import annotations

import re
from pathlib import Path

from lab import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples" / "wireguard"

# wg(8) keys per section; wg-quick(8) adds the rest.
WG_KEYS = {
    "Interface": {"PrivateKey", "ListenPort", "FwMark"},
    "Peer": {"PublicKey", "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive"},
}
WG_QUICK_KEYS = {
    "Address", "DNS", "MTU", "Table", "PreUp", "PostUp", "PreDown", "PostDown", "SaveConfig",
}  # fmt: skip

Section = tuple[str, list[tuple[str, str]]]


class ConfError(ValueError):
    pass


def parse(text: str) -> list[Section]:
    """[(section name, [(key, value), ...]), ...]: repeated [Peer] sections and keys kept."""
    sections: list[Section] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            if header[1] not in WG_KEYS:
                raise ConfError(f"line {n}: unknown section [{header[1]}]")
            sections.append((header[1], []))
            continue
        if "=" not in line or not sections:
            raise ConfError(f"line {n}: not `Key = value` inside a section: {raw!r}")
        key, value = (part.strip() for part in line.split("=", 1))
        name = sections[-1][0]
        if key not in WG_KEYS[name] and (name != "Interface" or key not in WG_QUICK_KEYS):
            raise ConfError(f"line {n}: {key} is not a key of [{name}]")
        sections[-1][1].append((key, value))
    return sections


def values(sections: list[Section], section: str, key: str) -> list[str]:
    return [v for name, items in sections if name == section for k, v in items if k == key]


def for_wg_setconf(sections: list[Section]) -> str:
    """The config without wg-quick's keys: what `wg setconf` accepts."""
    lines = []
    for name, items in sections:
        lines.append(f"[{name}]")
        lines += [f"{k} = {v}" for k, v in items if k not in WG_QUICK_KEYS]
    return "\n".join(lines) + "\n"


def load(name: str, replace: dict[str, str] | None = None) -> list[Section]:
    text = (EXAMPLES / name).read_text()
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    return parse(text)


def read_path(path: Path) -> list[Section]:
    return parse(path.read_text())
