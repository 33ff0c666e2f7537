"""engarde.yml: the models, the loader and the one-line error format.

Theory of operation
-------------------
A config file is YAML with a ``client:`` and/or a ``server:`` section; keys are camelCase and
case-sensitive, as in the Go original, so an existing ``engarde.yml`` loads unchanged.

Loading goes in three steps, and every problem found on the way is collected rather than raised
at once, so the user sees all of them in one go:

1. YAML -> plain Python data. The loader is PyYAML's SafeLoader (no arbitrary objects) with two
   changes: duplicate keys are reported instead of silently keeping the last one, and unquoted
   scalars stay the text that was written (``password: 0123`` is the string ``"0123"``, not the
   octal number 83, and ``description: 2024`` is a string). That is how the Go original reads
   string keys; the numeric keys (``writeTimeout``, ``clientTimeout``, ``maxClients``) parse their
   text themselves, which also lets them take units (``"1.5s"``).
2. Top level: must be a mapping whose keys are ``client`` and ``server``.
3. Each section -> a pydantic model (``extra="forbid"``, strict types, frozen). pydantic's errors
   are translated here into lines of the form ``FILE: key.path: message, got <value>``; its own
   multi-line text is never shown.

What this module does not do: resolve host names, check that addresses exist on this machine, or
open sockets. Those happen in ``engarde.net`` when the relay starts.

The validated models are plain immutable data. Nothing here is used per datagram.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import math
import os
import re
from collections.abc import Hashable, Iterable, Sequence
from fractions import Fraction
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

__all__ = [
    "DEFAULT_CLIENT_TIMEOUT_S",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_WRITE_TIMEOUT_MS",
    "ClientConfig",
    "Config",
    "ConfigError",
    "DstOverride",
    "Role",
    "ServerConfig",
    "WebManagerConfig",
    "describe",
    "load_config",
    "load_config_text",
    "parse_host_port",
]

Role = Literal["client", "server"]

DEFAULT_WRITE_TIMEOUT_MS = 10
DEFAULT_CLIENT_TIMEOUT_S = 30.0
DEFAULT_MAX_CLIENTS = 1024

_ROLES: tuple[Role, ...] = ("client", "server")


class ConfigError(Exception):
    """The config cannot be used. ``problems`` holds one line per problem, all of them."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


# --------------------------------------------------------------------------------------------
# HOST:PORT


_HOSTNAME_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"{_HOSTNAME_LABEL}(?:\.{_HOSTNAME_LABEL})*\.?")
_PORT_RE = re.compile(r"[0-9]+")
_HOST_PORT_HELP = "expected HOST:PORT"


def _split_host_port(text: object) -> tuple[str, int]:
    """Parse HOST:PORT; the ValueError message does not repeat the input (callers add it)."""
    if not isinstance(text, str):
        raise ValueError(f"{_HOST_PORT_HELP} as a string")
    if text != text.strip() or any(ch.isspace() for ch in text):
        raise ValueError(f"{_HOST_PORT_HELP} without spaces")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{_HOST_PORT_HELP}: missing ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"{_HOST_PORT_HELP}: missing ':PORT' after ']'")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"{_HOST_PORT_HELP}: {host!r} in brackets is not an IPv6 address"
            ) from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(_HOST_PORT_HELP)
        if ":" in host:
            raise ValueError(
                f"{_HOST_PORT_HELP}: an IPv6 address needs brackets, like '[::1]:59402'"
            )
        if host and re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(
                    f"{_HOST_PORT_HELP}: {host!r} is not a valid IPv4 address"
                ) from None
        elif host and (len(host) > 253 or not _HOSTNAME_RE.fullmatch(host)):
            raise ValueError(f"{_HOST_PORT_HELP}: {host!r} is not a valid IP address or host name")
    if not port_text:
        raise ValueError(f"{_HOST_PORT_HELP}: the port is missing")
    if not _PORT_RE.fullmatch(port_text):
        raise ValueError("the port must be a number from 1 to 65535")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError("the port must be from 1 to 65535")
    return host, port


def parse_host_port(text: str, *, what: str = "address") -> tuple[str, int]:
    """Split ``"HOST:PORT"`` into ``(host, port)``.

    Accepted: ``"192.0.2.1:59402"``, ``"vpn.example.org:59402"``, ``"[::1]:59402"``,
    ``"[fe80::1%eth0]:59402"`` and ``":59402"`` (host ``""``: any address). IPv6 addresses come
    back without brackets. The port must be 1..65535. Host names are not resolved here.

    On failure raises ValueError with a one-line message that ends in the bad input, e.g.
    ``expected HOST:PORT, got '1.2.3.4'``. When ``what`` is given (anything but the default
    ``"address"``) the message starts with it: ``client listenAddr: expected HOST:PORT, ...``.
    """
    try:
        return _split_host_port(text)
    except ValueError as exc:
        prefix = "" if what == "address" else f"{what}: "
        raise ValueError(f"{prefix}{exc}, got {_show(text)}") from None


def _check_listen_addr(text: str) -> str:
    host, _port = _split_host_port(text)
    if host and host != "localhost":  # the Go original accepts "localhost:PORT" too
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                "a listen address needs an IP address (or nothing, as in ':59402', for all "
                f"addresses), not the host name {host!r}"
            ) from None
    return text


def _check_dst_addr(text: str) -> str:
    _split_host_port(text)  # no host (":59301") means this machine, as in the Go original
    return text


# --------------------------------------------------------------------------------------------
# Durations: "10", "10ms", "1.5s", "2m", "1m30s"

_UNITS_S: dict[str, Fraction] = {
    "ns": Fraction(1, 1_000_000_000),
    "us": Fraction(1, 1_000_000),
    "µs": Fraction(1, 1_000_000),  # MICRO SIGN
    "μs": Fraction(1, 1_000_000),  # GREEK SMALL LETTER MU
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_BARE_NUMBER_RE = re.compile(rf"\s*([+-]?){_NUMBER}\s*")
_DURATION_PART_RE = re.compile(rf"\s*({_NUMBER})\s*(ns|us|µs|μs|ms|s|m|h)")


def _parse_duration_s(value: object, *, bare_unit_s: Fraction, help_text: str) -> Fraction:
    """A number (in ``bare_unit_s``) or a duration string -> exact seconds, possibly negative.

    YAML hands numbers over as text (see the loader), so "15" and 15 are the same thing here.
    bool is refused even though it is an int in Python: ``writeTimeout: true`` is a mistake.
    """
    if isinstance(value, bool):
        raise ValueError(help_text)
    if isinstance(value, int):
        return Fraction(value) * bare_unit_s
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(help_text)
        return Fraction(value) * bare_unit_s
    if not isinstance(value, str):
        raise ValueError(help_text)
    text = value.strip()
    if _BARE_NUMBER_RE.fullmatch(text):
        return Fraction(text.replace(" ", "")) * bare_unit_s
    sign = 1
    if text[:1] in ("+", "-"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if not text:
        raise ValueError(help_text)
    total = Fraction(0)
    pos = 0
    while pos < len(text):
        match = _DURATION_PART_RE.match(text, pos)
        if match is None:
            raise ValueError(help_text)
        total += Fraction(match.group(1)) * _UNITS_S[match.group(2)]
        pos = match.end()
    return sign * total


_WRITE_TIMEOUT_HELP = "expected milliseconds or a duration like '10ms', '1.5s', '2m'"
_CLIENT_TIMEOUT_HELP = "expected seconds or a duration like '45s', '2m', '1500ms'"


def _normalize_write_timeout(value: object) -> int:
    """-> milliseconds: 0 -> the default, negative -> -1 (disabled), fractions rounded up."""
    seconds = _parse_duration_s(value, bare_unit_s=Fraction(1, 1000), help_text=_WRITE_TIMEOUT_HELP)
    if seconds < 0:
        return -1
    if seconds == 0:
        return DEFAULT_WRITE_TIMEOUT_MS
    # Rounded up so that "250us" stays a (1 ms) timeout instead of becoming 0, i.e. the default.
    return math.ceil(seconds * 1000)


def _normalize_client_timeout(value: object) -> float:
    seconds = _parse_duration_s(value, bare_unit_s=Fraction(1), help_text=_CLIENT_TIMEOUT_HELP)
    if seconds < 0:
        raise ValueError("must not be negative (0 means the default, 30 seconds)")
    if seconds == 0:
        return DEFAULT_CLIENT_TIMEOUT_S
    return float(seconds)


_TRUE_WORDS = frozenset({"true", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "no", "off"})


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ValueError("expected true or false")


def _parse_count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        return int(value)
    raise ValueError("expected a whole number")


def _format_ms(ms: int | None) -> str:
    if ms is None:
        return "off (no write timeout)"
    return f"{ms}ms"


def _format_s(seconds: float) -> str:
    return f"{seconds:g}s"


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

    @field_validator("listenAddr")
    @classmethod
    def _listen_addr(cls, value: str) -> str:
        return _check_listen_addr(value) if value else value

    @property
    def auth_enabled(self) -> bool:
        return bool(self.username) and bool(self.password)


def _web_manager_or_none(value: WebManagerConfig | None) -> WebManagerConfig | None:
    if value is not None and not value.listenAddr:
        return None
    return value


class DstOverride(BaseModel):
    """Send to ``dstAddr`` instead of the section's ``dstAddr`` on interfaces named ``ifName``."""

    model_config = _MODEL_CONFIG

    ifName: str = Field(min_length=1)
    dstAddr: str

    @field_validator("dstAddr")
    @classmethod
    def _dst_addr(cls, value: str) -> str:
        return _check_dst_addr(value)


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

    @field_validator("listenAddr")
    @classmethod
    def _listen_addr(cls, value: str) -> str:
        return _check_listen_addr(value)

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

    def dst_for(self, ifname: str) -> str:
        """Destination for an uplink: the first matching ``dstOverrides`` entry, else dstAddr."""
        for override in self.dstOverrides:
            if _match_ifname(override.ifName, ifname):
                return override.dstAddr
        return self.dstAddr

    def label_for(self, ifname: str) -> str:
        """The cosmetic label of an interface, "" when none."""
        return self.interfaceLabels.get(ifname, "")


class ServerConfig(_RoleConfig):
    """The ``server:`` section."""

    clientTimeout: float = DEFAULT_CLIENT_TIMEOUT_S
    """Seconds after validation (0 in the file means the default, 30)."""
    maxClients: int = Field(default=DEFAULT_MAX_CLIENTS, ge=1)
    relayNonWireGuard: bool = False
    """Relay datagrams that are not shaped like WireGuard messages (off: counted and dropped)."""

    @field_validator("clientTimeout", mode="before")
    @classmethod
    def _client_timeout(cls, value: object) -> float:
        return _normalize_client_timeout(value)

    @field_validator("maxClients", mode="before")
    @classmethod
    def _max_clients(cls, value: object) -> int:
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


_SECTION_MODELS: dict[str, type[BaseModel]] = {"client": ClientConfig, "server": ServerConfig}
_SECTION_KEYS_LOWER = frozenset(
    key.lower() for model in _SECTION_MODELS.values() for key in model.model_fields
)


# --------------------------------------------------------------------------------------------
# YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps plain scalars as text and records duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        # Checked before SafeConstructor flattens merge keys ("<<"), whose keys may be overridden.
        seen: dict[tuple[str, str], int] = {}
        for key_node, _value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            line = key_node.start_mark.line + 1
            ident = (key_node.tag, key_node.value)
            if ident in seen:
                self.duplicates.append(
                    f"line {line}: duplicate key {key_node.value!r} (first on line "
                    f"{seen[ident]}); only one may be given"
                )
            else:
                seen[ident] = line
        return super().construct_mapping(node, deep=deep)


class _Plain(str):
    """An unquoted YAML number/bool/date kept as its text; shown without quotes in messages.

    pydantic stores it as an exact ``str``, so it never leaks into a validated Config.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return str.__str__(self)


def _construct_text(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode):  # pragma: no cover - resolver only tags scalars
        raise yaml.constructor.ConstructorError(None, None, "expected a scalar", node.start_mark)
    return _Plain(loader.construct_scalar(node))


for _tag in ("bool", "int", "float", "timestamp"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _construct_text)


def _yaml_error_line(source: str, text: str, exc: yaml.YAMLError) -> str:
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return f"{source}: YAML syntax error: {exc}"
    mark = exc.problem_mark
    what = exc.problem or "invalid YAML"
    if exc.context:
        what = f"{what} ({exc.context})"
    line = f"{source}: line {mark.line + 1}, column {mark.column + 1}: YAML syntax error: {what}"
    lines = text.splitlines()
    nearby = [mark.line]
    if exc.context_mark is not None:
        nearby.append(exc.context_mark.line)
    nearby_text = " ".join(lines[i] for i in nearby if 0 <= i < len(lines))
    if "\t" in nearby_text:
        line += "; indent with spaces, YAML does not allow tabs"
    elif re.search(r":\s*\[[0-9A-Fa-f:.%]*\]:", nearby_text):
        line += '; put IPv6 addresses in quotes, like "[::1]:59402"'
    elif "<block end>" in what or "not allowed here" in what:
        line += "; check the indentation"
    return line


# --------------------------------------------------------------------------------------------
# Error lines


_MAX_SHOWN = 60


def _show(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= _MAX_SHOWN else shown[: _MAX_SHOWN - 3] + "..."


_PLAIN_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY_RE.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _line(source: str, loc: Sequence[int | str], message: str) -> str:
    path = _path(loc)
    return f"{source}: {path}: {message}" if path else f"{source}: {message}"


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = _model_in(model.model_fields[part].annotation)
    return model


def _suggest(key: str, known: Iterable[str]) -> str | None:
    known = list(known)
    for name in known:
        if name.lower() == key.lower():
            return name
    lowered = {name.lower(): name for name in known}
    close = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def _unknown_key_message(key: object, known: Sequence[str], section: str | None) -> str:
    message = "unknown key"
    if not isinstance(key, str):
        return message
    if section is not None:
        other = "server" if section == "client" else "client"
        if key in _SECTION_MODELS[other].model_fields:
            return f"{message}: {key!r} belongs in the {other} section"
    suggestion = _suggest(key, known)
    if suggestion is not None:
        return f"{message}, did you mean {suggestion!r}?"
    return message


_TYPE_MESSAGES = {
    "string_type": "expected a string",
    "int_type": "expected a whole number",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
    "list_type": "expected a list",
    "dict_type": "expected a mapping (key: value lines)",
    "model_type": "expected a mapping (key: value lines)",
    "model_attributes_type": "expected a mapping (key: value lines)",
    "string_too_short": "must not be empty",
    "invalid_key": "keys must be strings",
}


def _validation_lines(
    source: str, section: str, model: type[BaseModel], exc: ValidationError, raw: object
) -> list[str]:
    """pydantic's errors -> our lines, in the order their keys appear in the file."""
    order = {key: i for i, key in enumerate(raw)} if isinstance(raw, dict) else {}

    def position(err: ErrorDetails) -> int:
        loc = err["loc"]
        return order.get(loc[0], len(order)) if loc else -1

    errors = sorted(exc.errors(include_url=False), key=position)
    # "listenaddr: did you mean 'listenAddr'?" already says why listenAddr is missing.
    suggested: set[tuple[int | str, ...]] = set()
    for err in errors:
        where = err["loc"]
        if err["type"] == "extra_forbidden" and where and isinstance(where[-1], str):
            parent = _model_at(model, where[:-1])
            if parent is not None:
                suggestion = _suggest(where[-1], parent.model_fields)
                if suggestion is not None:
                    suggested.add((*where[:-1], suggestion))

    lines: list[str] = []
    for err in errors:
        if err["type"] == "missing" and tuple(err["loc"]) in suggested:
            continue
        loc: list[int | str] = list(err["loc"])
        kind = err["type"]
        bad = err.get("input")
        ctx = err.get("ctx") or {}
        show_bad = True
        if kind == "missing":
            message = "required key missing"
            show_bad = False
        elif kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            known = list(parent.model_fields) if parent is not None else []
            message = _unknown_key_message(loc[-1], known, section if len(loc) == 1 else None)
            show_bad = False
        elif kind == "value_error" and "error" in ctx:
            message = str(ctx["error"])
        elif kind == "greater_than_equal":
            message = f"must be at least {ctx.get('ge')}"
        elif bad is None and kind in ("string_type", "list_type", "dict_type", "model_type"):
            message = "value missing"
            show_bad = False
        else:
            message = _TYPE_MESSAGES.get(kind, err["msg"])
        if loc and loc[-1] == "[key]":
            loc = loc[:-1]
            message = f"key {message}" if kind != "invalid_key" else message
        if show_bad:
            message = f"{message}, got {_show(bad)}"
        lines.append(_line(source, [section, *loc], message))
    return lines


# --------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | os.PathLike[str], *, role: Role | None = None) -> Config:
    """Read and validate an engarde.yml.

    Raises ConfigError listing every problem, one line each (``FILE: key.path: message, got
    <value>``), when the file cannot be read, is not valid YAML, or holds anything invalid.

    ``role=None`` (``engarde check-config`` without ``--role``) validates every section present
    and needs at least one. With a role, that section must be present and valid, as must the
    top level; a broken *other* section does not stop this role (the Go original ignores the
    other section too): it is left out of the result (``None``) and its problems are returned
    as ``Config.warnings``, for the caller to log. An absent other section is simply None.
    YAML syntax errors and duplicate keys are fatal wherever they are.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"{source}: line {line}: cannot read: not UTF-8 text"]) from exc
    return load_config_text(text, source=source, role=role)


def load_config_text(text: str, *, source: str = "<string>", role: Role | None = None) -> Config:
    """Like ``load_config``, from YAML text; ``source`` names it in the messages."""
    if role is not None and role not in _ROLES:
        raise ValueError(f"role must be 'client', 'server' or None, got {role!r}")
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_error_line(source, text, exc)]) from None
    finally:
        loader.dispose()

    problems = [f"{source}: {dup}" for dup in loader.duplicates]
    warnings: list[str] = []

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [
                *problems,
                f"{source}: expected a mapping with a 'client:' and/or 'server:' section at the "
                f"top level, got {_show(data)}",
            ]
        )

    for key in data:
        if key in _SECTION_MODELS:
            continue
        if (
            isinstance(key, str)
            and _suggest(key, _ROLES) is None
            and key.lower() in _SECTION_KEYS_LOWER
        ):
            message = "unknown key: section keys go under 'client:' or 'server:'"
        else:
            message = _unknown_key_message(key, _ROLES, None)
        problems.append(_line(source, [str(key)], message))

    lines_by_section: dict[str, list[str]] = {}
    client = _validate_section(data, "client", ClientConfig, source, lines_by_section)
    server = _validate_section(data, "server", ServerConfig, source, lines_by_section)
    for name, lines in lines_by_section.items():
        if role is not None and name != role:
            warnings.append(
                f"{source}: {name}: section ignored (running as {role}), it has problems:"
            )
            warnings.extend(lines)
        else:
            problems.extend(lines)

    if "client" not in data and "server" not in data:
        problems.append(f"{source}: no 'client' or 'server' section")
    elif role is not None and role not in data:
        problems.append(f"{source}: {role}: section missing")

    if problems:
        raise ConfigError(problems)

    warnings.extend(_lint(source, client, server))
    config = Config(client=client, server=server)
    config._source = source
    config._warnings = tuple(warnings)
    return config


_M = TypeVar("_M", bound=BaseModel)


def _validate_section(
    data: dict[Any, Any],
    name: str,
    model: type[_M],
    source: str,
    lines_by_section: dict[str, list[str]],
) -> _M | None:
    if name not in data:
        return None
    raw = data[name]
    if raw is None:  # "client:" with nothing under it: present, every required key missing
        raw = {}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines_by_section[name] = _validation_lines(source, name, model, exc, raw)
        return None


def _lint(source: str, client: ClientConfig | None, server: ServerConfig | None) -> list[str]:
    """Valid but probably not what was meant."""
    out: list[str] = []
    for name, web in (
        ("client", client.webManager if client else None),
        ("server", server.webManager if server else None),
    ):
        if web is None or web.auth_enabled:
            continue
        if web.username or web.password:
            given = "username" if web.username else "password"
            out.append(
                _line(
                    source,
                    [name, "webManager"],
                    f"only the {given} is set, so there is NO authentication "
                    "(set both username and password)",
                )
            )
    if client is not None:
        first: dict[str, int] = {}
        for index, override in enumerate(client.dstOverrides):
            if override.ifName in first:
                out.append(
                    _line(
                        source,
                        ["client", "dstOverrides", index],
                        f"never used: dstOverrides[{first[override.ifName]}] already matches "
                        f"{override.ifName!r} (the first match wins)",
                    )
                )
            else:
                first[override.ifName] = index
    return out


# --------------------------------------------------------------------------------------------
# Effective settings, for `engarde check-config`


def _describe_web(prefix: str, web: WebManagerConfig | None) -> list[str]:
    if web is None:
        return [f"{prefix}.webManager: off"]
    return [
        f"{prefix}.webManager.listenAddr: {web.listenAddr}",
        f"{prefix}.webManager.username: {web.username or '(none)'}",
        f"{prefix}.webManager.password: {'***' if web.password else '(none)'}",
        f"{prefix}.webManager.auth: {'on' if web.auth_enabled else 'off'}",
    ]


def _describe_client(c: ClientConfig) -> list[str]:
    lines = [
        f"client.description: {c.description or '(none)'}",
        f"client.listenAddr: {c.listenAddr}",
        f"client.dstAddr: {c.dstAddr}",
        f"client.writeTimeout: {_format_ms(c.write_timeout_ms)}",
        "client.excludedInterfaces: " + (", ".join(c.excludedInterfaces) or "(none)"),
    ]
    if c.interfaceLabels:
        lines += [
            f"{_path(['client', 'interfaceLabels', name])}: {label}"
            for name, label in c.interfaceLabels.items()
        ]
    else:
        lines.append("client.interfaceLabels: (none)")
    if c.dstOverrides:
        lines += [
            f"client.dstOverrides[{i}]: {o.ifName} -> {o.dstAddr}"
            for i, o in enumerate(c.dstOverrides)
        ]
    else:
        lines.append("client.dstOverrides: (none)")
    lines += _describe_web("client", c.webManager)
    lines.append(f"client.dropForeignSources: {'true' if c.dropForeignSources else 'false'}")
    return lines


def _describe_server(s: ServerConfig) -> list[str]:
    return [
        f"server.description: {s.description or '(none)'}",
        f"server.listenAddr: {s.listenAddr}",
        f"server.dstAddr: {s.dstAddr}",
        f"server.clientTimeout: {_format_s(s.client_timeout_s)}",
        f"server.writeTimeout: {_format_ms(s.write_timeout_ms)}",
        *_describe_web("server", s.webManager),
        f"server.maxClients: {s.maxClients}",
        f"server.relayNonWireGuard: {'true' if s.relayNonWireGuard else 'false'}",
    ]


def describe(config: Config, role: str | None = None) -> str:
    """The effective settings, one ``key: value`` per line, defaults filled in.

    Keys use the same dotted paths as error messages. Passwords show as ``***``. With a role,
    only that section is shown; a section that is not there shows as ``client: (none)``.
    """
    if role is not None and role not in _ROLES:
        raise ValueError(f"role must be 'client', 'server' or None, got {role!r}")
    lines = [f"source: {config.source}"]
    for name in _ROLES:
        if role is not None and name != role:
            continue
        if name == "client":
            lines += _describe_client(config.client) if config.client else ["client: (none)"]
        else:
            lines += _describe_server(config.server) if config.server else ["server: (none)"]
    return "\n".join(lines)
