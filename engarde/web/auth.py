"""Who may use the dashboard: HTTP basic auth (the Host allow-list and the refusal of
cross-site commands are in engarde.web.guard).

Basic auth (realm "engarde") guards every path when both a username and a password are set, as
in the original. Both the username and the password are always compared, each in constant time,
so the answer time says nothing about which one (or how much of it) was right.
"""

from __future__ import annotations

import base64
import binascii
import hmac

REALM = "engarde"
CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'


def credentials_ok(authorization: str | None, username: str, password: str) -> bool:
    """True when the Authorization header carries exactly these basic-auth credentials."""
    given_user, given_password = _parse_basic(authorization)
    user_ok = hmac.compare_digest(given_user, username.encode())
    password_ok = hmac.compare_digest(given_password, password.encode())
    return user_ok and password_ok and authorization is not None


def _parse_basic(authorization: str | None) -> tuple[bytes, bytes]:
    """(user, password) from a Basic Authorization header; two empty values when malformed,
    which never match since auth is on only when both configured values are non-empty."""
    if authorization is None:
        return b"", b""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return b"", b""
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b"", b""
    user, sep, password = decoded.partition(b":")
    if not sep:
        return b"", b""
    return user, password
