"""The values in engarde.yml: HOST:PORT, durations, booleans and counts, and how they read back.

Plain functions over text; nothing here knows pydantic or which key a value belongs to. The
private parsers raise ValueError with a one-line message that does not repeat the input: the
error format adds ``, got <value>`` (shown with ``_show``). ``parse_host_port``, the public one,
adds it itself.
"""

from __future__ import annotations

import ipaddress
import math
import re
from fractions import Fraction

__all__ = ["parse_host_port"]


_MAX_SHOWN = 60


def _show(value: object) -> str:
    """A value as messages quote it: its repr, cut to 60 characters."""
    shown = repr(value)
    return shown if len(shown) <= _MAX_SHOWN else shown[: _MAX_SHOWN - 3] + "..."


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


def host_family(text: str) -> str:
    """ "ipv4", "ipv6" or "name" for the host of a valid HOST:PORT ("" host: "name", resolved
    to this machine)."""
    host, _port = _split_host_port(text)
    try:
        return "ipv6" if ipaddress.ip_address(host.split("%", 1)[0]).version == 6 else "ipv4"
    except ValueError:
        return "name"


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
_MAX_DURATION_CHARS = 1000
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
    if len(text) > _MAX_DURATION_CHARS:  # no sane duration is this long; int() would refuse it
        raise ValueError(f"{help_text} (too long)")
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


# --------------------------------------------------------------------------------------------
# Booleans and counts

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


# --------------------------------------------------------------------------------------------
# Back to text, for `engarde check-config`


def _format_ms(ms: int | None) -> str:
    if ms is None:
        return "off (no write timeout)"
    return f"{ms}ms"


def _format_s(seconds: float) -> str:
    return f"{seconds:g}s"
