"""The bridge's exceptions, one tree, each raised at exactly one boundary.

::

    BridgeError                      every error carries ``code``: a short stable slug for logs,
    │                                answers and dead letters
    ├── ConfigError                  the configuration is invalid (CLI exit status 78)
    ├── StorageUnavailableError      the store could not commit or read: disk full, I/O error,
    │                                locked past the deadline, database gone (intake answers 503
    │                                + Retry-After)
    ├── InvalidPayloadError          the body is not a JSON object (intake answers 400; nothing
    │                                is stored)
    ├── UnmappableError              an authenticated JSON object that cannot become Segment
    │                                messages; ``code`` is kept with the dead letter as its reason
    └── DeliveryError                raised by the Segment sink only (bridge.delivery.sinks), which
        │                            translates HTTP statuses and library exceptions into these
        ├── TransientDeliveryError   worth retrying: network, timeouts, 408/410/429/460, 5xx but
        │                            501/505; ``retry_after`` carries the server's wish, if any
        └── PermanentDeliveryError   the batch (or one message in it) will never be accepted

Foreign exceptions (sqlite3, asyncpg, requests, segment's APIError) never travel past the module
that talks to that library: they are translated there with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Sequence


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose; ``code`` names the kind in one slug."""

    code: str = "error"


class ConfigError(BridgeError):
    """Invalid configuration; ``problems`` lists one line per key at fault."""

    code = "config_invalid"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class StorageUnavailableError(BridgeError):
    """The store cannot take or give data right now; nothing was committed."""

    code = "storage_unavailable"


class InvalidPayloadError(BridgeError):
    """A body the bridge will not accept at all. ``code`` is the short error code of the answer."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


class UnmappableError(BridgeError):
    """A webhook that cannot be mapped. ``code`` is the dead letter's reason, ``detail`` prose."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


class DeliveryError(BridgeError):
    """Segment did not take a batch."""

    code = "delivery_failed"

    def __init__(self, detail: str, status: int | None = None) -> None:
        self.detail = detail
        self.status = status
        super().__init__(detail)


class TransientDeliveryError(DeliveryError):
    """Try again later; ``retry_after`` (seconds) is the server's Retry-After, if it sent one."""

    code = "delivery_transient"

    def __init__(
        self, detail: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail, status)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """Sending the same batch again will fail the same way."""

    code = "delivery_rejected"
