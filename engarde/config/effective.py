"""The effective settings of a Config: as text for ``engarde check-config``, and what changed
between two configs, for a reload.

One ``key: value`` line per setting, defaults filled in, keys written as the error messages
write them (``client.interfaceLabels.wwan0``), passwords as ``***``. Nothing here validates:
it reads Configs the loader already accepted.

`diff(old, new, role)` compares the same entries (passwords by value, shown as ``***``) and
says for each changed key whether a running daemon can take it as it is (`Change.live`) or
needs a restart: the listen addresses (the peers send there), the dashboard's listen address,
and `relayNonWireGuard` (a different way of serving altogether). Everything else a reload
applies: exclusions (runtime ones made from the dashboard stay), destinations and overrides
(new sockets first, then the old ones close), labels, web credentials, timeouts, dedup, caps,
address families.
"""

from __future__ import annotations

from dataclasses import dataclass

from engarde.config.errors import _path
from engarde.config.models import _ROLES, ClientConfig, Config, ServerConfig, WebManagerConfig
from engarde.config.units import _format_ms, _format_s

__all__ = ["RESTART_KEYS", "Change", "describe", "diff"]

# Keys a running daemon cannot change: its peers or WireGuard are configured to use them.
RESTART_KEYS = frozenset(
    {
        "client.listenAddr",
        "server.listenAddr",
        "server.relayNonWireGuard",
        "client.webManager.listenAddr",
        "server.webManager.listenAddr",
    }
)

# (key, shown value, compared value): passwords are shown as *** but compared by value.
_Entry = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Change:
    """One setting that differs between the running config and the file."""

    key: str
    old: str  # as `describe` shows it ("(none)" when the key is not there)
    new: str
    live: bool = True  # a running daemon applies it (False: it needs a restart)

    def __str__(self) -> str:
        tail = "" if self.live else " (needs a restart)"
        return f"{self.key}: {self.old} -> {self.new}{tail}"


def _plain(key: str, value: str) -> _Entry:
    return (key, value, value)


def _web(prefix: str, web: WebManagerConfig | None) -> list[_Entry]:
    if web is None:
        return [_plain(f"{prefix}.webManager", "off")]
    return [
        _plain(f"{prefix}.webManager.listenAddr", web.listenAddr),
        _plain(f"{prefix}.webManager.username", web.username or "(none)"),
        (
            f"{prefix}.webManager.password",
            "***" if web.password else "(none)",
            web.password or "(none)",
        ),
        _plain(f"{prefix}.webManager.auth", "on" if web.auth_enabled else "off"),
        _plain(
            f"{prefix}.webManager.allowedHosts",
            ", ".join(web.allowedHosts) or "(own addresses and localhost only)",
        ),
    ]


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _client(c: ClientConfig) -> list[_Entry]:
    entries = [
        _plain("client.description", c.description or "(none)"),
        _plain("client.listenAddr", c.listenAddr),
        _plain("client.dstAddr", c.dstAddr),
        _plain("client.writeTimeout", _format_ms(c.write_timeout_ms)),
        _plain("client.excludedInterfaces", ", ".join(c.excludedInterfaces) or "(none)"),
    ]
    if c.interfaceLabels:
        entries += [
            _plain(_path(["client", "interfaceLabels", name]), label)
            for name, label in c.interfaceLabels.items()
        ]
    else:
        entries.append(_plain("client.interfaceLabels", "(none)"))
    if c.dstOverrides:
        for i, o in enumerate(c.dstOverrides):
            shown = f"{o.ifName} -> {o.dstAddr}" if o.dstAddr else f"{o.ifName} ->"
            if o.dstAddrV6:
                shown += f" (IPv6: {o.dstAddrV6})" if o.dstAddr else f" {o.dstAddrV6} (IPv6)"
            entries.append(_plain(f"client.dstOverrides[{i}]", shown))
    else:
        entries.append(_plain("client.dstOverrides", "(none)"))
    entries += _web("client", c.webManager)
    entries.append(_plain("client.dropForeignSources", _bool(c.dropForeignSources)))
    entries.append(_plain("client.dedup", _bool(c.dedup)))
    families = c.families
    entries.append(
        _plain(
            "client.addressFamilies",
            "(the original's: the first IPv4 address of each interface)"
            if families is None
            else ", ".join(families),
        )
    )
    if c.dstAddrV6:
        entries.append(_plain("client.dstAddrV6", c.dstAddrV6))
    interval = c.resolve_interval_s
    entries.append(
        _plain(
            "client.resolveInterval",
            "never (host names resolved only when a socket is made)"
            if interval is None
            else f"{_format_s(interval)} (host names only; sooner when the server falls silent)",
        )
    )
    return entries


def _dedup_text(s: ServerConfig) -> str:
    if s.relayNonWireGuard:
        return "off (relayNonWireGuard: nothing to read a WireGuard counter from)"
    return _bool(s.dedup)


def _server(s: ServerConfig) -> list[_Entry]:
    return [
        _plain("server.description", s.description or "(none)"),
        _plain("server.listenAddr", s.listenAddr),
        _plain("server.dstAddr", s.dstAddr),
        _plain("server.clientTimeout", _format_s(s.client_timeout_s)),
        _plain("server.writeTimeout", _format_ms(s.write_timeout_ms)),
        *_web("server", s.webManager),
        _plain("server.maxClients", str(s.maxClients)),
        _plain("server.maxPeers", str(s.maxPeers)),
        _plain("server.relayNonWireGuard", _bool(s.relayNonWireGuard)),
        _plain("server.dedup", _dedup_text(s)),
    ]


def _entries(config: Config, role: str | None) -> list[_Entry]:
    if role is not None and role not in _ROLES:
        raise ValueError(f"role must be 'client', 'server' or None, got {role!r}")
    entries: list[_Entry] = []
    for name in _ROLES:
        if role is not None and name != role:
            continue
        if name == "client":
            entries += _client(config.client) if config.client else [_plain("client", "(none)")]
        else:
            entries += _server(config.server) if config.server else [_plain("server", "(none)")]
    return entries


def describe(config: Config, role: str | None = None) -> str:
    """The effective settings, one ``key: value`` per line, defaults filled in.

    Keys use the same dotted paths as error messages. Passwords show as ``***``. With a role,
    only that section is shown; a section that is not there shows as ``client: (none)``.
    """
    lines = [f"source: {config.source}"]
    lines += [f"{key}: {shown}" for key, shown, _ in _entries(config, role)]
    return "\n".join(lines)


def diff(old: Config, new: Config, role: str | None = None) -> list[Change]:
    """What differs between two configs (of `role`'s section only, if given), in `describe`'s
    order: keys of `old` first, then keys only `new` has."""
    before = {key: (shown, value) for key, shown, value in _entries(old, role)}
    after = {key: (shown, value) for key, shown, value in _entries(new, role)}
    # A dashboard that appears or goes away is a restart, all of its keys.
    restart = set(RESTART_KEYS)
    for name in ("client", "server"):
        if (f"{name}.webManager" in before) != (f"{name}.webManager" in after):
            restart |= {k for k in [*before, *after] if k.startswith(f"{name}.webManager")}
    changes = []
    for key in [*before, *(k for k in after if k not in before)]:
        old_shown, old_value = before.get(key, ("(none)", "(none)"))
        new_shown, new_value = after.get(key, ("(none)", "(none)"))
        if old_value != new_value:
            if old_shown == new_shown:  # a password: say that it changed, never what
                new_shown = f"{new_shown} (changed)"
            changes.append(Change(key, old_shown, new_shown, key not in restart))
    return changes
