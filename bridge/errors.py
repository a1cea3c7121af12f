"""The bridge's exceptions, one tree, each raised at exactly one boundary.

::

    BridgeError
    ├── ConfigError              the configuration is invalid (CLI exit status 78)
    ├── StorageUnavailable       the store could not commit or read: disk full, I/O error,
    │                            locked past the deadline (intake answers 503 + Retry-After)
    ├── InvalidPayload           the body is not a JSON object, or names another event code
    │                            than its URL (intake answers 400; nothing is stored)
    ├── Unmappable               an authenticated JSON object that cannot become Segment
    │                            messages; ``reason`` is a short code kept with the dead letter
    └── DeliveryError            raised by the Segment sink only (bridge.delivery.sinks), which
        │                        translates HTTP statuses and library exceptions into these
        ├── TransientDelivery    worth retrying: network, timeouts, 408/410/429/460, 5xx but
        │                        501/505; ``retry_after`` carries the server's wish, if any
        └── PermanentDelivery    the batch (or one message in it) will never be accepted

Foreign exceptions (sqlite3, requests, segment's APIError) never travel past the module that
talks to that library: they are translated there with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Sequence


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """Invalid configuration; ``problems`` lists one line per key at fault."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class StorageUnavailable(BridgeError):
    """The store cannot take or give data right now; nothing was committed."""


class InvalidPayload(BridgeError):
    """A body the bridge will not accept at all. ``code`` is the short error code of the answer."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


class Unmappable(BridgeError):
    """A webhook that cannot be mapped. ``reason`` is a short stable code, ``detail`` prose."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class DeliveryError(BridgeError):
    """Segment did not take a batch."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        self.detail = detail
        self.status = status
        super().__init__(detail)


class TransientDelivery(DeliveryError):
    """Try again later; ``retry_after`` (seconds) is the server's Retry-After, if it sent one."""

    def __init__(
        self, detail: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail, status)
        self.retry_after = retry_after


class PermanentDelivery(DeliveryError):
    """Sending the same batch again will fail the same way."""
