"""A small client for Synap's API: the webhook subscriptions, nothing else.

Why its own module: ``synap sync`` is the one place the bridge calls Synap, and the API is beta
and mostly undocumented. Documented (api-docs.synap.ac): ``POST {api}/webhook-subscriptions``,
JSON:API (``application/vnd.api+json``), a Personal Access Token as ``Authorization: Bearer``.
Not documented, so taken from JSON:API's conventions: ``GET`` the collection (following
``links.next``), ``PATCH`` and ``DELETE`` ``/webhook-subscriptions/{id}``. When Synap refuses
one of those (404, 405, 501) the call raises :class:`NotSupportedError` and the caller falls back
(creates what is missing, tells the operator what to remove by hand).

Every call is bounded by one total deadline (connect, send, read the answer), not a per-read
timeout, and an answer is read up to :data:`MAX_ANSWER_BYTES`. The token is sent only in the
header: it is never part of an error, a log line or ``repr``. Unlike the rest of
:mod:`bridge.synap` (pure), this module does I/O; only the CLI imports it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson

from bridge.errors import BridgeError

MEDIA_TYPE = "application/vnd.api+json"
TYPE = "WebhookSubscription"
COLLECTION = "webhook-subscriptions"
#: Statuses that mean "this API does not do that" for the undocumented calls.
NOT_SUPPORTED = frozenset({404, 405, 501})
MAX_ANSWER_BYTES = 4 * 1024 * 1024
#: Pages of the collection followed at most (JSON:API pagination through ``links.next``).
MAX_PAGES = 100


class SynapApiError(BridgeError):
    """Synap's API answered with an error, or could not be reached within the deadline."""

    code = "synap_api"

    def __init__(self, doing: str, detail: str, status: int | None = None) -> None:
        self.status = status
        self.detail = detail
        where = f"HTTP {status}: " if status is not None else ""
        super().__init__(f"Synap's API could not {doing}: {where}{detail}")


class NotSupportedError(SynapApiError):
    """The API refused an undocumented call (list, update, delete) as unknown or unsupported."""

    code = "synap_api_not_supported"


@dataclass(frozen=True, slots=True)
class Subscription:
    """A WebhookSubscription as the API shows it (the password is never kept)."""

    id: str
    event_name: str
    target_url: str
    username: str | None
    active: bool


@dataclass(frozen=True, slots=True)
class Wanted:
    """What a subscription should be: one event code to one URL with Basic credentials."""

    event_name: str
    target_url: str
    username: str
    password: str

    def attributes(self) -> dict[str, Any]:
        return {
            "eventName": self.event_name,
            "targetUrl": self.target_url,
            "basicAuth": {"username": self.username, "password": self.password},
            "active": True,
        }

    def __repr__(self) -> str:  # the password stays out of every repr and traceback
        return f"Wanted({self.event_name!r}, {self.target_url!r}, {self.username!r}, ***)"


class SynapApi:
    """``async with SynapApi(url, token, timeout_secs) as api: await api.subscriptions()``."""

    def __init__(self, base_url: str, token: str, timeout_secs: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout_secs = timeout_secs
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"SynapApi({self.base_url!r}, token=***)"

    async def __aenter__(self) -> SynapApi:
        self._session = aiohttp.ClientSession(
            headers={
                "Authorization": f"Bearer {self._token}",
                "Accept": MEDIA_TYPE,
            },
            timeout=aiohttp.ClientTimeout(total=self.timeout_secs),
        )
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- the calls --------------------------------------------------------------------------

    async def subscriptions(self) -> list[Subscription]:
        """Every subscription (undocumented: NotSupportedError when refused)."""
        found: list[Subscription] = []
        url: str | None = f"{self.base_url}/{COLLECTION}"
        for _ in range(MAX_PAGES):
            if url is None:
                return found
            document = await self._call("GET", url, "list the webhook subscriptions", guess=True)
            data = document.get("data")
            if not isinstance(data, list):
                raise SynapApiError("list the webhook subscriptions", "the answer has no data list")
            found.extend(_subscription(item) for item in data)
            links = document.get("links")
            following = links.get("next") if isinstance(links, dict) else None
            url = self._absolute(following) if isinstance(following, str) and following else None
        raise SynapApiError("list the webhook subscriptions", f"more than {MAX_PAGES} pages")

    async def create(self, wanted: Wanted) -> Subscription:
        body = {"data": {"type": TYPE, "attributes": wanted.attributes()}}
        doing = f"create the subscription for {wanted.event_name}"
        document = await self._call("POST", f"{self.base_url}/{COLLECTION}", doing, body)
        return _subscription(document.get("data"))

    async def update(self, subscription_id: str, wanted: Wanted) -> Subscription:
        """PATCH (undocumented: NotSupportedError when refused)."""
        body = {"data": {"type": TYPE, "id": subscription_id, "attributes": wanted.attributes()}}
        doing = f"update subscription {subscription_id}"
        url = f"{self.base_url}/{COLLECTION}/{subscription_id}"
        document = await self._call("PATCH", url, doing, body, guess=True)
        return _subscription(document.get("data"))

    async def delete(self, subscription_id: str) -> None:
        """DELETE (undocumented: NotSupportedError when refused)."""
        url = f"{self.base_url}/{COLLECTION}/{subscription_id}"
        await self._call("DELETE", url, f"delete subscription {subscription_id}", guess=True)

    # ---- plumbing ---------------------------------------------------------------------------

    def _absolute(self, link: str) -> str:
        """A ``links.next`` as a URL, refused when it leaves the API's scheme and host (the
        token goes wherever the next request goes)."""
        url = urljoin(self.base_url + "/", link)
        if urlsplit(url)[:2] != urlsplit(self.base_url)[:2]:
            raise SynapApiError("follow the next page", "the link leaves Synap's API")
        return url

    async def _call(
        self,
        method: str,
        url: str,
        doing: str,
        body: dict[str, Any] | None = None,
        *,
        guess: bool = False,
    ) -> dict[str, Any]:
        """One request under one total deadline (connect, send, read); the JSON:API document."""
        if self._session is None:
            raise RuntimeError("use SynapApi as an async context manager")
        headers = {"Content-Type": MEDIA_TYPE} if body is not None else {}
        data = orjson.dumps(body) if body is not None else None
        try:
            async with asyncio.timeout(self.timeout_secs):
                async with self._session.request(
                    method, url, data=data, headers=headers, allow_redirects=False
                ) as answer:
                    raw = await _read_bounded(answer, doing)
                    status = answer.status
        except TimeoutError:
            raise SynapApiError(doing, f"no answer within {self.timeout_secs:g} s") from None
        except aiohttp.ClientError as exc:
            raise SynapApiError(doing, f"{type(exc).__name__}: {exc}") from None
        return _document(status, raw, doing, guess)


async def _read_bounded(answer: aiohttp.ClientResponse, doing: str) -> bytes:
    """The whole answer body, or SynapApiError as soon as it passes MAX_ANSWER_BYTES."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in answer.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise SynapApiError(doing, f"the answer is larger than {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _document(status: int, raw: bytes, doing: str, guess: bool) -> dict[str, Any]:
    """The answer as a JSON:API document ({} for an empty 2xx), or the error it says.

    ``guess``: the call is not documented, so a 404/405/501 is NotSupportedError.
    """
    if status == 401:
        detail = "the token was refused (missing, invalid or revoked; tokens look like p:...)"
        raise SynapApiError(doing, detail, status)
    if guess and status in NOT_SUPPORTED:
        raise NotSupportedError(doing, _errors(raw) or "not supported", status)
    if not 200 <= status < 300:
        raise SynapApiError(doing, _errors(raw) or "no error code", status)
    if status == 204 or not raw.strip():
        return {}
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise SynapApiError(doing, "the answer is not JSON", status) from None
    if not isinstance(document, dict):
        raise SynapApiError(doing, "the answer is not a JSON:API document", status)
    return document


def _errors(raw: bytes) -> str:
    """JSON:API ``errors`` as their codes (and where in the request), never their text.

    An API may echo the request in ``title`` or ``detail`` (or in a body that is not JSON):
    the Bearer token and the webhook password with it. So only what looks like a code is
    shown (:data:`CODE`); the operator reads the rest in Synap's documentation by that code.
    """
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return ""
    codes = []
    for error in errors[:5]:
        if not isinstance(error, dict) or not _is_code(error.get("code")):
            continue
        pointer = (error.get("source") or {}).get("pointer") if _has_source(error) else None
        where = f" at {pointer}" if _is_code(pointer) else ""
        codes.append(f"{error['code']}{where}")
    return f"error code {', '.join(codes)}" if codes else ""


#: What an error code (or a JSON pointer) looks like: short, no spaces, no secrets' room.
CODE = re.compile(r"[A-Za-z0-9_./-]{1,64}")


def _is_code(value: Any) -> bool:
    return isinstance(value, str) and CODE.fullmatch(value) is not None


def _has_source(error: dict[str, Any]) -> bool:
    return isinstance(error.get("source"), dict)


def _subscription(item: Any) -> Subscription:
    if not isinstance(item, dict) or item.get("type") != TYPE or item.get("id") is None:
        raise SynapApiError("read a subscription", f"not a {TYPE} resource object")
    attributes = item.get("attributes")
    attributes = attributes if isinstance(attributes, dict) else {}
    auth = attributes.get("basicAuth")
    username = auth.get("username") if isinstance(auth, dict) else None
    return Subscription(
        id=str(item["id"]),
        event_name=str(attributes.get("eventName") or ""),
        target_url=str(attributes.get("targetUrl") or ""),
        username=str(username) if username is not None else None,
        active=attributes.get("active") is not False,
    )
