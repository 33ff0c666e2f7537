"""engarde.yml -> Config: read the file, parse the YAML, validate each section, collect problems.

Every problem found on the way is collected rather than raised at once, so the user sees all of
them in one go (``ConfigError``):

1. YAML -> plain Python data. The loader is PyYAML's SafeLoader (no arbitrary objects) with two
   changes: duplicate keys are reported (with their line numbers) instead of silently keeping
   the last one, and unquoted scalars stay the text that was written (``password: 0123`` is the
   string ``"0123"``, not the octal number 83). That is how the Go original reads string keys;
   the numeric keys parse their text themselves, which also lets them take units (``"1.5s"``).
2. Top level: must be a mapping whose keys are ``client`` and ``server``.
3. Each section -> its pydantic model; its errors become lines (``engarde.config.errors``).

Then ``_lint`` adds warnings for settings that are valid but probably not what was meant.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from engarde.config.errors import (
    ConfigError,
    _line,
    _suggest,
    _unknown_key_message,
    _validation_lines,
)
from engarde.config.models import (
    _ROLES,
    _SECTION_MODELS,
    ClientConfig,
    Config,
    Role,
    ServerConfig,
    _pick_destination,
)
from engarde.config.units import _show

__all__ = ["load_config", "load_config_text"]


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


_MISSING_DESTINATION = {
    "ipv4": ("dstAddr", "an IPv4 address or a host name as dstAddr"),
    "ipv6": ("dstAddrV6", "dstAddrV6, or a host name as dstAddr"),
}


def _lint_destinations(source: str, client: ClientConfig) -> list[str]:
    out: list[str] = []
    covered: dict[str, dict[str, int]] = {}  # ifName -> family -> the entry serving it first
    for index, override in enumerate(client.dstOverrides):
        serves = [
            family
            for family in ("ipv4", "ipv6")
            if _pick_destination(family, override.dstAddrV6, override.dstAddr) is not None
        ]
        earlier = covered.setdefault(override.ifName, {})
        if all(family in earlier for family in serves):
            first = min(earlier[family] for family in serves)
            out.append(
                _line(
                    source,
                    ["client", "dstOverrides", index],
                    f"never used: dstOverrides[{first}] already matches "
                    f"{override.ifName!r} (the first match wins)",
                )
            )
        for family in serves:
            earlier.setdefault(family, index)
    for family in client.families or ("ipv4",):
        if _pick_destination(family, client.dstAddrV6, client.dstAddr) is None:
            key, give = _MISSING_DESTINATION[family]
            out.append(
                _line(
                    source,
                    ["client", key],
                    f"no server address for {family} paths: they stay unused (give {give})",
                )
            )
    return out


# --------------------------------------------------------------------------------------------
# Loading

# A section key (in any case) at the top level: it was meant to go under a section.
_SECTION_KEYS_LOWER = frozenset(
    key.lower() for model in _SECTION_MODELS.values() for key in model.model_fields
)


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
        out.extend(_lint_destinations(source, client))
    return out
