"""HTTP Basic authentication, compared in constant time.

Synap's only documented authentication is Basic auth on the webhook subscription. Both the user
name and the password are compared with :func:`hmac.compare_digest`, and both comparisons always
run (``&``, not ``and``), so the answer time says nothing about which part, or how much of it,
was right. :func:`guard` is the one check every protected endpoint (webhooks, ``/metrics``) runs.
"""

from __future__ import annotations

import binascii
import hmac
from base64 import b64decode

from aiohttp import web
from pydantic import SecretStr

from bridge.receive.answers import error

CHALLENGE = 'Basic realm="synap-segment-bridge", charset="UTF-8"'


def parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    """``Authorization: Basic base64(user:password)`` -> (user, password), or None if malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None


def credentials_match(header: str | None, username: str, password: str) -> bool:
    """True when the header carries exactly these credentials (constant-time comparison)."""
    supplied = parse_basic(header)
    if supplied is None:
        return False
    user_ok = hmac.compare_digest(supplied[0], username.encode("utf-8"))
    password_ok = hmac.compare_digest(supplied[1], password.encode("utf-8"))
    return user_ok & password_ok


def guard(
    request: web.BaseRequest,
    username: str,
    password: SecretStr | None,
    next_password: SecretStr | None = None,
) -> web.Response | None:
    """The 401 answer when credentials are required and missing or wrong; None to proceed.

    No password configured means the endpoint is open (the bridge then listens on loopback only,
    :meth:`bridge.config.Config.listen_problem`). ``next_password`` is accepted too while a
    password is rotated (``auth.next_password``); both comparisons run, whichever matches.
    """
    if password is None:
        return None
    header = request.headers.get("Authorization")
    matches = [
        credentials_match(header, username, secret.get_secret_value())
        for secret in (password, next_password)
        if secret is not None
    ]
    if any(matches):
        return None
    return error(
        401, "unauthorized", "missing or wrong credentials", {"WWW-Authenticate": CHALLENGE}
    )
