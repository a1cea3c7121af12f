"""Basic auth parsing and the constant-time comparison."""

from __future__ import annotations

import hmac
from base64 import b64encode

import pytest

from bridge.receive import auth


def basic(user: str, password: str) -> str:
    return "Basic " + b64encode(f"{user}:{password}".encode()).decode()


class TestCredentials:
    def test_right_credentials(self) -> None:
        assert auth.credentials_match(basic("synap", "pä55:w"), "synap", "pä55:w")

    @pytest.mark.parametrize(
        "header",
        [
            None,
            "",
            "Basic",
            "Basic !!!notbase64",
            "Bearer abc",
            "Basic " + b64encode(b"no-colon").decode(),
            basic("synap", "wrong"),
            basic("other", "secret"),
            basic("synap", "secret") + "x",
            basic("synap", "secretsecret"),
        ],
    )
    def test_wrong_or_malformed(self, header: str | None) -> None:
        assert not auth.credentials_match(header, "synap", "secret")

    def test_scheme_is_case_insensitive(self) -> None:
        assert auth.credentials_match(basic("u", "p").replace("Basic", "basic"), "u", "p")

    def test_both_parts_compared_with_compare_digest(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """By construction: every check goes through hmac.compare_digest, both parts each time."""
        calls: list[tuple[bytes, bytes]] = []
        real = hmac.compare_digest

        def spy(a: bytes, b: bytes) -> bool:
            calls.append((a, b))
            return real(a, b)

        monkeypatch.setattr(hmac, "compare_digest", spy)  # the module bridge.receive.auth calls
        assert not auth.credentials_match(basic("bad-user", "secret"), "synap", "secret")
        assert calls == [(b"bad-user", b"synap"), (b"secret", b"secret")]
