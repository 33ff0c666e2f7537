"""The one-line error format: every problem is ``FILE: key.path: message, got <value>``.

``ConfigError`` carries all the problems of a file at once, one line each. pydantic's errors are
translated here (its own multi-line text is never shown): the key path comes from the error's
location (``client.dstOverrides[1].dstAddr``), the message from its type or from our
validators' ValueError, and the bad value is quoted with ``_show``. An unknown key gets a "did you
mean" when a known key is close, or "belongs in the server section" when it is the other
section's key; the "required key missing" that such a typo also causes is left out.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from typing import get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from engarde.config.models import _SECTION_MODELS
from engarde.config.units import _show

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """The config cannot be used. ``problems`` holds one line per problem, all of them."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


# --------------------------------------------------------------------------------------------
# Key paths and lines


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


# --------------------------------------------------------------------------------------------
# Unknown keys: did you mean


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


# --------------------------------------------------------------------------------------------
# pydantic's errors -> lines


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
