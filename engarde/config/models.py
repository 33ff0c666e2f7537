"""The pydantic models of engarde.yml, the defaults, and what each key's value means.

One model per section (``ClientConfig``, ``ServerConfig``; ``_RoleConfig`` holds the keys both
have) and ``Config`` for the whole file. Field names are the YAML keys (camelCase, as in the Go
original). Every model forbids unknown keys, is strict about types and frozen; the validators
turn the text YAML hands over into values (``writeTimeout`` -> milliseconds, ``clientTimeout`` ->
seconds, ``"yes"`` -> True) with the parsers of ``engarde.config.units``.

The models are plain immutable data, read at start-up and by the dashboard, never per datagram.
Turning pydantic's errors into our one-line messages is ``engarde.config.errors``' job.
"""

from __future__ import annotations

import fnmatch
import math
from fractions import Fraction
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from engarde.config.units import (
    _check_dst_addr,
    _check_listen_addr,
    _parse_bool,
    _parse_count,
    _parse_duration_s,
    host_family,
)

__all__ = [
    "DEFAULT_CLIENT_TIMEOUT_S",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_PEERS",
    "DEFAULT_RESOLVE_INTERVAL_S",
    "DEFAULT_WRITE_TIMEOUT_MS",
    "ClientConfig",
    "Config",
    "DstOverride",
    "Role",
    "ServerConfig",
    "WebManagerConfig",
]

Role = Literal["client", "server"]
Family = Literal["ipv4", "ipv6"]

DEFAULT_WRITE_TIMEOUT_MS = 10
DEFAULT_CLIENT_TIMEOUT_S = 30.0
DEFAULT_RESOLVE_INTERVAL_S = 60.0
DEFAULT_MAX_CLIENTS = 1024
DEFAULT_MAX_PEERS = 128

_ROLES: tuple[Role, ...] = ("client", "server")


# --------------------------------------------------------------------------------------------
# Timeouts: the units are parsed in units.py, what 0 and negative values mean is decided here

_WRITE_TIMEOUT_HELP = "expected milliseconds or a duration like '10ms', '1.5s', '2m'"
_CLIENT_TIMEOUT_HELP = "expected seconds or a duration like '45s', '2m', '1500ms'"


_RESOLVE_INTERVAL_HELP = "expected seconds or a duration like '60s', '5m', '1h'"

# The sane ranges (issue 13): a value outside is a mistake, not a wish. A write deadline under
# 1 ms or above an hour, an address timeout under a second (no reply would ever arrive) or
# above a day, a re-resolve more often than every second or less often than a day.
WRITE_TIMEOUT_RANGE_MS = (1, 3_600_000)
CLIENT_TIMEOUT_RANGE_S = (Fraction(1), Fraction(86_400))
RESOLVE_INTERVAL_RANGE_S = (Fraction(1), Fraction(86_400))


def _out_of_range(low: str, high: str, meaning: str) -> ValueError:
    return ValueError(f"must be from {low} to {high} ({meaning})")


def _normalize_write_timeout(value: object) -> int:
    """-> milliseconds: 0 -> the default, negative -> -1 (disabled), fractions rounded up."""
    seconds = _parse_duration_s(value, bare_unit_s=Fraction(1, 1000), help_text=_WRITE_TIMEOUT_HELP)
    if seconds < 0:
        return -1
    if seconds == 0:
        return DEFAULT_WRITE_TIMEOUT_MS
    # Rounded up so that "250us" stays a (1 ms) timeout instead of becoming 0, i.e. the default.
    # Compared as an exact fraction first: "1" and 400 zeros is an error, not an OverflowError.
    if seconds * 1000 > WRITE_TIMEOUT_RANGE_MS[1]:
        raise _out_of_range("1ms", "1h", "0 means the default, 10ms; negative disables it")
    return math.ceil(seconds * 1000)


def _normalize_client_timeout(value: object) -> float:
    seconds = _parse_duration_s(value, bare_unit_s=Fraction(1), help_text=_CLIENT_TIMEOUT_HELP)
    if seconds < 0:
        raise ValueError("must not be negative (0 means the default, 30 seconds)")
    if seconds == 0:
        return DEFAULT_CLIENT_TIMEOUT_S
    low, high = CLIENT_TIMEOUT_RANGE_S
    if not low <= seconds <= high:
        raise _out_of_range("1s", "24h", "0 means the default, 30 seconds")
    return float(seconds)


def _normalize_resolve_interval(value: object) -> float:
    """-> seconds: 0 -> the default, negative -> -1.0 (never re-resolved)."""
    seconds = _parse_duration_s(value, bare_unit_s=Fraction(1), help_text=_RESOLVE_INTERVAL_HELP)
    if seconds < 0:
        return -1.0
    if seconds == 0:
        return DEFAULT_RESOLVE_INTERVAL_S
    low, high = RESOLVE_INTERVAL_RANGE_S
    if not low <= seconds <= high:
        raise _out_of_range("1s", "24h", "0 means the default, 60 seconds; negative: never")
    return float(seconds)


# --------------------------------------------------------------------------------------------
# Models

_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, strict=True)


class WebManagerConfig(BaseModel):
    """The HTTP dashboard/API. Basic auth only when both username and password are set."""

    model_config = _MODEL_CONFIG

    # Empty means "no web manager", as in the original; a loaded Config never holds an empty one
    # (the section becomes None instead).
    listenAddr: str = ""
    username: str = ""
    password: str = ""
    allowedHosts: list[str] = Field(default_factory=list)
    """Host names (or addresses) the dashboard answers to besides its own: the listen address,
    localhost and the machine's addresses are always allowed; "*" allows any (no check)."""

    @field_validator("listenAddr")
    @classmethod
    def _listen_addr(cls, value: str) -> str:
        return _check_listen_addr(value) if value else value

    @field_validator("allowedHosts")
    @classmethod
    def _allowed_hosts(cls, value: list[str]) -> list[str]:
        out = []
        for name in value:
            host = name.strip().lower()
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            if not host or any(c in host for c in "/ @?#") or host.count(":") == 1:
                raise ValueError(
                    f"expected a host name or address without scheme or port, got {name!r}"
                )
            out.append(host)
        return out

    @property
    def auth_enabled(self) -> bool:
        return bool(self.username) and bool(self.password)


def _web_manager_or_none(value: WebManagerConfig | None) -> WebManagerConfig | None:
    if value is not None and not value.listenAddr:
        return None
    return value


class DstOverride(BaseModel):
    """Send to ``dstAddr`` (``dstAddrV6`` for IPv6 paths) instead of the section's destination
    on interfaces named ``ifName``."""

    model_config = _MODEL_CONFIG

    ifName: str = Field(min_length=1)
    dstAddr: str  # "" only when dstAddrV6 is given
    dstAddrV6: str = ""

    @model_validator(mode="before")
    @classmethod
    def _v6_only(cls, data: object) -> object:
        if isinstance(data, dict) and "dstAddr" not in data and data.get("dstAddrV6"):
            return {**data, "dstAddr": ""}
        return data

    @field_validator("dstAddr")
    @classmethod
    def _dst_addr(cls, value: str) -> str:
        return _check_dst_addr(value) if value else value

    @field_validator("dstAddrV6")
    @classmethod
    def _dst_addr_v6(cls, value: str) -> str:
        return _check_dst_addr_v6(value)


def _check_dst_addr_v6(value: str) -> str:
    if value and host_family(_check_dst_addr(value)) == "ipv4":
        raise ValueError("expected an IPv6 address in brackets or a host name, not IPv4")
    return value


def _pick_destination(family: str, v6: str, main: str) -> str | None:
    """The destination of a path of `family` from a dstAddrV6 / dstAddr pair (None: none)."""
    if family == "ipv6":
        if v6:
            return v6
        return main if main and host_family(main) != "ipv4" else None
    return main if main and host_family(main) != "ipv6" else None


def _match_ifname(pattern: str, ifname: str) -> bool:
    # Exact first: interface names may contain glob characters ("Ethernet [2]" on Windows).
    return pattern == ifname or fnmatch.fnmatchcase(ifname, pattern)


class _RoleConfig(BaseModel):
    """The keys both sections have."""

    model_config = _MODEL_CONFIG

    description: str = ""
    listenAddr: str
    dstAddr: str
    writeTimeout: int = DEFAULT_WRITE_TIMEOUT_MS
    """Milliseconds after validation; -1 means disabled (see ``write_timeout_ms``)."""
    webManager: WebManagerConfig | None = None
    dedup: bool = True
    """Drop exact copies of a WireGuard datagram before WireGuard (engarde's own key)."""

    @field_validator("listenAddr")
    @classmethod
    def _listen_addr(cls, value: str) -> str:
        return _check_listen_addr(value)

    @field_validator("dedup", mode="before")
    @classmethod
    def _dedup(cls, value: object) -> bool:
        return _parse_bool(value)

    @field_validator("dstAddr")
    @classmethod
    def _dst_addr(cls, value: str) -> str:
        return _check_dst_addr(value)

    @field_validator("writeTimeout", mode="before")
    @classmethod
    def _write_timeout(cls, value: object) -> int:
        return _normalize_write_timeout(value)

    @field_validator("webManager")
    @classmethod
    def _web_manager(cls, value: WebManagerConfig | None) -> WebManagerConfig | None:
        return _web_manager_or_none(value)

    @property
    def write_timeout_ms(self) -> int | None:
        """The write deadline in milliseconds; None when disabled."""
        return None if self.writeTimeout < 0 else self.writeTimeout


class ClientConfig(_RoleConfig):
    """The ``client:`` section."""

    excludedInterfaces: list[str] = Field(default_factory=list)
    interfaceLabels: dict[str, str] = Field(default_factory=dict)
    dstOverrides: list[DstOverride] = Field(default_factory=list)
    dropForeignSources: bool = True
    addressFamilies: list[Family] | None = None
    """None: the original's choice (the first usable IPv4 address of each interface); else
    every usable address of these families is a path."""
    dstAddrV6: str = ""
    """The server for IPv6 paths when dstAddr is an IPv4 address."""
    resolveInterval: float = DEFAULT_RESOLVE_INTERVAL_S
    """Seconds between resolutions of destinations given as host names (-1: never again)."""

    @field_validator("resolveInterval", mode="before")
    @classmethod
    def _resolve_interval(cls, value: object) -> float:
        return _normalize_resolve_interval(value)

    @property
    def resolve_interval_s(self) -> float | None:
        """How often host-name destinations are resolved again; None: only when a socket is
        made."""
        return None if self.resolveInterval < 0 else self.resolveInterval

    @field_validator("addressFamilies")
    @classmethod
    def _families(cls, value: list[Family] | None) -> list[Family] | None:
        if value is not None:
            if not value:
                raise ValueError("must name at least one of ipv4, ipv6 (or leave it out)")
            if len(set(value)) != len(value):
                raise ValueError("lists a family twice")
        return value

    @field_validator("dstAddrV6")
    @classmethod
    def _dst_addr_v6(cls, value: str) -> str:
        return _check_dst_addr_v6(value)

    @field_validator("excludedInterfaces")
    @classmethod
    def _excluded(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name:
                raise ValueError("interface names must not be empty")
        return value

    @field_validator("dropForeignSources", mode="before")
    @classmethod
    def _drop_foreign(cls, value: object) -> bool:
        return _parse_bool(value)

    def is_excluded(self, ifname: str) -> bool:
        """True when ``ifname`` equals or glob-matches an ``excludedInterfaces`` entry."""
        return any(_match_ifname(pattern, ifname) for pattern in self.excludedInterfaces)

    @property
    def families(self) -> tuple[str, ...] | None:
        """The address families whose every usable address is a path (None: the original's
        one IPv4 address per interface)."""
        return None if self.addressFamilies is None else tuple(self.addressFamilies)

    def dst_for(self, ifname: str, family: str = "ipv4") -> str | None:
        """Destination of a path of `family` over `ifname`: the first matching ``dstOverrides``
        entry that has one for this family, else the section's. None when nothing fits (an
        IPv4 path and an IPv6-only dstAddr, or the other way round)."""
        for override in self.dstOverrides:
            if _match_ifname(override.ifName, ifname):
                found = _pick_destination(family, override.dstAddrV6, override.dstAddr)
                if found is not None:
                    return found
        return _pick_destination(family, self.dstAddrV6, self.dstAddr)

    def label_for(self, ifname: str) -> str:
        """The cosmetic label of an interface, "" when none."""
        return self.interfaceLabels.get(ifname, "")


class ServerConfig(_RoleConfig):
    """The ``server:`` section."""

    clientTimeout: float = DEFAULT_CLIENT_TIMEOUT_S
    """Seconds after validation (0 in the file means the default, 30)."""
    maxClients: int = Field(default=DEFAULT_MAX_CLIENTS, ge=1, le=1_048_576)
    """Client addresses (one per client uplink) served at once, over all clients."""
    maxPeers: int = Field(default=DEFAULT_MAX_PEERS, ge=1, le=65_536)
    """Clients (WireGuard peers, each with its own upstream socket) served at once."""
    relayNonWireGuard: bool = False
    """Relay datagrams that are not shaped like WireGuard messages (off: counted and dropped)."""

    @field_validator("clientTimeout", mode="before")
    @classmethod
    def _client_timeout(cls, value: object) -> float:
        return _normalize_client_timeout(value)

    @field_validator("maxClients", "maxPeers", mode="before")
    @classmethod
    def _counts(cls, value: object) -> int:
        return _parse_count(value)

    @field_validator("relayNonWireGuard", mode="before")
    @classmethod
    def _relay_non_wireguard(cls, value: object) -> bool:
        return _parse_bool(value)

    @property
    def client_timeout_s(self) -> float:
        """How long a client address may stay silent and still receive copies."""
        return self.clientTimeout


class Config(BaseModel):
    """A whole engarde.yml. ``source`` and ``warnings`` come from the loader, not from YAML."""

    model_config = _MODEL_CONFIG

    client: ClientConfig | None = None
    server: ServerConfig | None = None

    _source: str = PrivateAttr(default="<string>")
    _warnings: tuple[str, ...] = PrivateAttr(default=())

    @property
    def source(self) -> str:
        """Where the config came from (the path as given, or ``<string>``)."""
        return self._source

    @property
    def warnings(self) -> list[str]:
        """Non-fatal remarks, same one-line format as ConfigError's problems. Log them."""
        return list(self._warnings)


# The sections by name, for the loader and for "'clientTimeout' belongs in the server section".
_SECTION_MODELS: dict[str, type[BaseModel]] = {"client": ClientConfig, "server": ServerConfig}
