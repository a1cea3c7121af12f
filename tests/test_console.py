"""The operator's console over HTTP: headers, sign-in, sessions, CSRF, escaping, replay.

The real bridge application (real SQLite file, real delivery loop to the strict fake Segment)
and the real console application on the same runtime, each served by aiohttp's test server;
the browser-level story is tests/test_console_browser.py.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.config import Config
from bridge.console import listener
from bridge.console.app import build_console
from bridge.console.chart import draw, nice_ceiling
from bridge.console.security import (
    COOKIE,
    CSP,
    MAX_SESSIONS,
    MAX_TRACKED,
    LoginThrottle,
    Sessions,
)
from bridge.console.traffic import Minute
from bridge.errors import ConfigError
from bridge.receive.runtime import RUNTIME
from bridge.store import DeadLetterFilter, EventQuery
from tests import pgcluster
from tests.conftest import (
    PASSWORD,
    USER,
    attempt_completed,
    basic_auth,
    fixture_body,
    polled,
    settled,
)
from tests.fakes import FakeSegment, ManualClock
from tests.test_exam_hold import attempt_body as exam_attempt

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

CONSOLE_USER = "ops"
CONSOLE_PASSWORD = "console-only secret 42"
XSS = "<script>alert(1)</script>"


@dataclass
class Bridge:
    webhooks: Client
    console: Client
    config: Config

    async def post(self, code: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await self.webhooks.post(
            f"/webhooks/synap/{code}", data=orjson.dumps(body), headers=basic_auth()
        )
        assert answer.status == 200, await answer.text()
        result: dict[str, Any] = await answer.json()
        await settled(self.webhooks.app)  # kept first, mapped after: wait for the verdict
        return result


def console_section(**extra: Any) -> dict[str, Any]:
    return {"console": {"username": CONSOLE_USER, "password": CONSOLE_PASSWORD, **extra}}


@pytest.fixture
async def bridge(
    aiohttp_client: MakeClient, fake_segment: FakeSegment, config_factory: Callable[..., Config]
) -> Bridge:
    config = config_factory(fake_segment.url, **console_section())
    app = build_app(config)
    webhooks = await aiohttp_client(app)
    console = await aiohttp_client(build_console(app[RUNTIME]))
    return Bridge(webhooks, console, config)


async def sign_in(
    client: Client, username: str = CONSOLE_USER, password: str = CONSOLE_PASSWORD
) -> int:
    answer = await client.post(
        "/login", data={"username": username, "password": password}, allow_redirects=False
    )
    return answer.status


async def csrf_of(client: Client, path: str = "/dead-letters") -> str:
    page = await (await client.get(path)).text()
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


class TestHeaders:
    async def test_every_answer_carries_the_security_headers(self, bridge: Bridge) -> None:
        for path in ("/login", "/static/console.css", "/no-such-page"):
            answer = await bridge.console.get(path, allow_redirects=False)
            assert answer.headers["Content-Security-Policy"] == CSP, path
            assert answer.headers["X-Frame-Options"] == "DENY"
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert "script-src 'self'" in CSP
        assert "unsafe-inline" not in CSP

    async def test_pages_with_personal_data_are_never_cached(self, bridge: Bridge) -> None:
        await bridge.post("attempt.completed", attempt_completed(1))
        assert await sign_in(bridge.console) == 303
        store = bridge.webhooks.app[RUNTIME].store
        (record,) = await store.find_events(EventQuery(user_id="user-1"), 0)
        for path in ("/", "/overview/live", "/events?user=user-1", f"/events/{record.webhook_id}"):
            answer = await bridge.console.get(path)
            assert answer.status == 200, path
            assert answer.headers["Cache-Control"] == "no-store", path
        static = await bridge.console.get("/static/console.js")
        assert static.headers["Cache-Control"].startswith("private")

    async def test_no_inline_script_in_any_page(self, bridge: Bridge) -> None:
        assert await sign_in(bridge.console) == 303
        for path in ("/", "/events", "/dead-letters", "/login"):
            page = await (await bridge.console.get(path)).text()
            for tag in re.findall(r"<script[^>]*>", page):
                assert 'src="/static/' in tag, (path, tag)
            assert " on" + "click=" not in page
            assert "style=" not in page


class TestSignIn:
    async def test_pages_need_a_session(self, bridge: Bridge) -> None:
        answer = await bridge.console.get("/", allow_redirects=False)
        assert answer.status == 303
        assert answer.headers["Location"] == "/login"
        answer = await bridge.console.post("/dead-letters/replay", data={"reason": "x"})
        assert answer.status == 403

    async def test_session_cookie_is_httponly_and_strict(self, bridge: Bridge) -> None:
        answer = await bridge.console.post(
            "/login",
            data={"username": CONSOLE_USER, "password": CONSOLE_PASSWORD},
            allow_redirects=False,
        )
        assert answer.status == 303
        cookie = answer.cookies[COOKIE]
        assert cookie["httponly"]
        assert cookie["samesite"] == "Strict"
        assert (await bridge.console.get("/")).status == 200

    async def test_secure_cookie_behind_tls(
        self, aiohttp_client: MakeClient, config_factory: Callable[..., Config]
    ) -> None:
        config = config_factory(**console_section(secure_cookie=True))
        console = await aiohttp_client(build_console(build_app(config)[RUNTIME]))
        answer = await console.post(
            "/login",
            data={"username": CONSOLE_USER, "password": CONSOLE_PASSWORD},
            allow_redirects=False,
        )
        assert answer.status == 303
        assert answer.cookies[COOKIE]["secure"]

    async def test_the_webhook_password_opens_nothing(
        self, bridge: Bridge, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        assert await sign_in(bridge.console, USER, PASSWORD) == 401
        assert await sign_in(bridge.console, CONSOLE_USER, PASSWORD) == 401
        # Basic auth with the webhook's credentials is not a session either.
        answer = await bridge.console.get("/", headers=basic_auth(), allow_redirects=False)
        assert answer.status == 303
        assert any("console_login_failed" in r.getMessage() for r in caplog.records)

    async def test_a_console_password_equal_to_the_webhook_one_is_refused(
        self, config_factory: Callable[..., Config]
    ) -> None:
        with pytest.raises(ConfigError, match=r"console\.password must differ"):
            config_factory(console={"username": "ops", "password": PASSWORD})

    async def test_the_console_is_not_on_the_webhook_port(self, bridge: Bridge) -> None:
        for path in ("/", "/login", "/events", "/dead-letters", "/static/console.js"):
            answer = await bridge.webhooks.get(path, headers=basic_auth())
            assert answer.status == 404, path
        answer = await bridge.console.post(
            "/webhooks/synap/attempt.completed", headers=basic_auth()
        )
        assert answer.status in (403, 404)

    async def test_failed_sign_ins_are_limited_and_logged_with_the_address(
        self, bridge: Bridge, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        attempts = bridge.config.console.login_attempts
        for _ in range(attempts):
            assert await sign_in(bridge.console, password="guess") == 401
        # Now even the right password waits for the window to pass.
        answer = await bridge.console.post(
            "/login", data={"username": CONSOLE_USER, "password": CONSOLE_PASSWORD}
        )
        assert answer.status == 429
        assert int(answer.headers["Retry-After"]) > 0
        failed = [
            r.getMessage() for r in caplog.records if "console_login_failed" in r.getMessage()
        ]
        assert len(failed) == attempts
        assert all("127.0.0.1" in line for line in failed)
        assert any("console_login_refused" in r.getMessage() for r in caplog.records)

    async def test_cross_site_post_is_refused(self, bridge: Bridge) -> None:
        answer = await bridge.console.post(
            "/login",
            data={"username": CONSOLE_USER, "password": CONSOLE_PASSWORD},
            headers={"Origin": "http://evil.example"},
            allow_redirects=False,
        )
        assert answer.status == 403

    async def test_sign_out_ends_the_session(self, bridge: Bridge) -> None:
        assert await sign_in(bridge.console) == 303
        token = await csrf_of(bridge.console, "/")
        answer = await bridge.console.post("/logout", data={"csrf": token}, allow_redirects=False)
        assert answer.status == 303
        assert (await bridge.console.get("/", allow_redirects=False)).status == 303


def hostile(value: Any) -> Any:
    """Every string of a JSON value replaced by a script tag (keys kept, so it still maps)."""
    if isinstance(value, dict):
        return {key: hostile(item) for key, item in value.items()}
    if isinstance(value, list):
        return [hostile(item) for item in value]
    if isinstance(value, str):
        return f"{XSS}{value}"
    return value


class TestEscaping:
    async def test_script_in_every_field_is_shown_escaped(self, bridge: Bridge) -> None:
        body = hostile(attempt_completed("x"))
        body["meta"]["timestamp"] = "2026-11-01T10:00:01Z"  # a valid time: it maps
        mapped = await bridge.post("attempt.completed", body)
        lost = hostile(attempt_completed("y"))
        del lost["user"]  # no user id: a whole-webhook dead letter with the body's text
        dead = await bridge.post("attempt.completed", lost)
        named = attempt_completed("z")
        named["meta"]["eventName"] = XSS  # the dead letter's detail quotes it
        await bridge.post("attempt.completed", named)
        assert await sign_in(bridge.console) == 303
        user = body["user"]["id"]
        pages = [
            "/",
            f"/events/{mapped['webhook_id']}",
            f"/events/{dead['webhook_id']}",
            "/dead-letters",
            f"/events?user={user}",
            f"/events?ref={XSS}&code={XSS}",
            f"/events/{XSS}",
        ]
        letters = await bridge.webhooks.app[RUNTIME].store.dead_letters(DeadLetterFilter())
        pages += [f"/dead-letters/{letter.id}" for letter in letters]
        for path in pages:
            answer = await bridge.console.get(path)
            page = await answer.text()
            assert "<script>alert" not in page, path
        shown = await (await bridge.console.get(f"/events/{mapped['webhook_id']}")).text()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown
        found = await (await bridge.console.get(f"/events?user={user}")).text()
        assert mapped["webhook_id"] in found


class TestReplay:
    async def dead_message(self, bridge: Bridge, fake: FakeSegment) -> int:
        fake.fail(400, times=1)  # Segment refuses the one message: a dead letter
        await bridge.post("attempt.completed", attempt_completed(7))
        store = bridge.webhooks.app[RUNTIME].store

        letters: list[Any] = []

        async def buried() -> bool:
            letters[:] = await store.dead_letters(DeadLetterFilter())
            return bool(letters)

        await polled(buried)
        return int(letters[0].id)

    async def test_replay_needs_the_csrf_token(
        self, bridge: Bridge, fake_segment: FakeSegment
    ) -> None:
        letter = await self.dead_message(bridge, fake_segment)
        assert await sign_in(bridge.console) == 303
        for form in (
            {"id": str(letter), "confirm": "yes"},
            {"id": str(letter), "confirm": "yes", "csrf": "forged"},
        ):
            answer = await bridge.console.post("/dead-letters/replay", data=form)
            assert answer.status == 403
        store = bridge.webhooks.app[RUNTIME].store
        assert [d.id for d in await store.dead_letters(DeadLetterFilter())] == [letter]

    async def test_replay_asks_first_then_logs_who(
        self, bridge: Bridge, fake_segment: FakeSegment, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        await self.dead_message(bridge, fake_segment)
        assert await sign_in(bridge.console) == 303
        token = await csrf_of(bridge.console)
        ask = await bridge.console.post(
            "/dead-letters/replay", data={"csrf": token, "reason": "rejected_by_segment"}
        )
        assert ask.status == 200
        assert "Yes, replay" in await ask.text()
        store = bridge.webhooks.app[RUNTIME].store
        assert len(await store.dead_letters(DeadLetterFilter())) == 1  # nothing done yet
        done = await bridge.console.post(
            "/dead-letters/replay",
            data={"csrf": token, "reason": "rejected_by_segment", "confirm": "yes"},
        )
        assert done.status == 200
        assert "Replayed 1 dead letter(s) as 1 message(s)" in await done.text()
        await fake_segment.wait_for(1)
        assert await store.dead_letters(DeadLetterFilter()) == []
        audit = [r.getMessage() for r in caplog.records if "console_replay" in r.getMessage()]
        assert len(audit) == 1
        assert CONSOLE_USER in audit[0]
        assert "rejected_by_segment" in audit[0]

    async def test_nothing_selected_is_a_400(self, bridge: Bridge) -> None:
        assert await sign_in(bridge.console) == 303
        token = await csrf_of(bridge.console)
        answer = await bridge.console.post("/dead-letters/replay", data={"csrf": token})
        assert answer.status == 400


class TestOverview:
    async def test_counts_and_destinations(self, bridge: Bridge, fake_segment: FakeSegment) -> None:
        await bridge.post("attempt.completed", attempt_completed(1))
        await fake_segment.wait_for(1)
        assert await sign_in(bridge.console) == 303
        live = ""

        async def acked() -> bool:  # Segment has it; the ack's commit follows
            nonlocal live
            live = await (await bridge.console.get("/overview/live")).text()
            return re.search(r'id="delivered">1<', live) is not None

        await polled(acked)
        assert re.search(r'id="received">1<', live), live
        assert "state-live" in live
        assert "<svg" in live
        assert "<polyline" in live

    async def test_chart_geometry(self) -> None:
        minutes = [Minute(60.0 * i, i, i // 2, 1 if i == 3 else 0) for i in range(60)]
        chart = draw(minutes)
        received, delivered, errors = chart.lines
        assert len(received.points.split()) == 60
        assert received.total == sum(range(60))
        assert errors.total == 1
        assert chart.y_ticks[-1].text == str(nice_ceiling(59)) == "100"
        first_y = float(received.points.split()[0].split(",")[1])
        assert first_y == chart.plot[3]  # zero sits on the x axis
        assert "1770 webhooks in" in chart.summary
        assert delivered.total == sum(i // 2 for i in range(60))


class TestSearch:
    async def test_fields_and_time_range_as_the_cli_reads_them(self, bridge: Bridge) -> None:
        first = await bridge.post("attempt.completed", attempt_completed(1, user="ada"))
        other = await bridge.post("attempt.completed", attempt_completed(2, user="bob"))
        assert await sign_in(bridge.console) == 303

        async def found(query: str) -> str:
            answer = await bridge.console.get(f"/events?{query}")
            assert answer.status == 200, query
            return await answer.text()

        by_user = await found("user=ada&since=1h")
        assert first["webhook_id"] in by_user
        assert other["webhook_id"] not in by_user
        assert "1 webhook(s)" in await found("ref=att-2")
        assert "0 webhook(s)" in await found("user=ada&until=1h")  # received less than 1h ago
        assert "2 webhook(s)" in await found("code=attempt.completed&since=2026-01-01T00:00:00Z")
        assert "Fill in any field" in await found("state=nonsense")

    async def test_an_unreadable_time_is_said_not_guessed(self, bridge: Bridge) -> None:
        assert await sign_in(bridge.console) == 303
        answer = await bridge.console.get("/events?since=last+tuesday")
        assert answer.status == 400
        assert "since: not a time" in await answer.text()

    async def test_an_unknown_webhook_or_letter_is_a_404(self, bridge: Bridge) -> None:
        assert await sign_in(bridge.console) == 303
        for path in ("/events/wh_999", "/events/nonsense", "/dead-letters/999", "/dead-letters/x"):
            assert (await bridge.console.get(path)).status == 404, path


class TestConfiguration:
    def test_off_until_both_username_and_password_are_set(
        self, config_factory: Callable[..., Config]
    ) -> None:
        assert not config_factory().console.enabled
        assert not config_factory(console={"username": "ops"}).console.enabled
        assert config_factory(**console_section()).console.enabled

    def test_its_port_is_not_the_webhook_port(self, config_factory: Callable[..., Config]) -> None:
        with pytest.raises(ConfigError, match=r"console\.port must differ"):
            config_factory(server={"port": 8080}, **console_section(port=8080))


class TestSessionsAndLimits:
    def test_a_session_expires_and_ends(self) -> None:
        clock = ManualClock(1000.0)
        sessions = Sessions(60, clock)
        token, started = sessions.start("ops")
        assert sessions.get(token) == started
        assert sessions.get(None) is None
        assert sessions.get("forged") is None
        clock.now += 61
        assert sessions.get(token) is None  # expired, and forgotten
        token, _ = sessions.start("ops")
        sessions.end(token)
        assert sessions.get(token) is None

    def test_sessions_are_bounded(self) -> None:
        sessions = Sessions(60, ManualClock(0.0))
        first, _ = sessions.start("ops")
        for _ in range(MAX_SESSIONS):
            sessions.start("ops")
        assert sessions.get(first) is None  # the oldest went first

    def test_failed_sign_ins_are_forgotten_after_the_window(self) -> None:
        clock = ManualClock(0.0)
        throttle = LoginThrottle(2, 300, clock)
        assert throttle.failed("192.0.2.1") == 1
        assert throttle.failed("192.0.2.1") == 2
        assert throttle.blocked_for("192.0.2.1") == 300
        assert throttle.blocked_for("192.0.2.2") == 0  # per address
        clock.now = 301
        assert throttle.blocked_for("192.0.2.1") == 0
        assert throttle.failed("192.0.2.1") == 1

    def test_the_address_table_is_bounded(self) -> None:
        throttle = LoginThrottle(1, 300, ManualClock(0.0))
        throttle.failed("first")
        for n in range(MAX_TRACKED):
            throttle.failed(f"10.0.{n // 256}.{n % 256}")
        assert throttle.blocked_for("first") == 0


class TestWebhookPage:
    async def test_held_and_superseded_are_explained(self, bridge: Bridge) -> None:
        held = await bridge.post("attempt.completed", exam_attempt("completed"))
        assert await sign_in(bridge.console) == 303
        page = await (await bridge.console.get(f"/events/{held['webhook_id']}")).text()
        assert "state-held" in page
        assert "waits for the exam.* webhook of the same attempt" in page
        assert "Raw webhook body, as received" in page
        await bridge.post("exam.completed", fixture_body("exam.completed"))
        page = await (await bridge.console.get(f"/events/{held['webhook_id']}")).text()
        assert "no message of its own" in page
        assert "superseded" in page


class TestListener:
    async def test_off_without_credentials(
        self, config_factory: Callable[..., Config], caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        runtime = build_app(config_factory())[RUNTIME]
        assert await listener.start(runtime) is None
        assert any("console_off" in r.getMessage() for r in caplog.records)

    async def test_says_its_url_and_refuses_a_taken_port(
        self, config_factory: Callable[..., Config], caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO)
        runtime = build_app(config_factory(**console_section(port=0)))[RUNTIME]
        runner = await listener.start(runtime)
        assert runner is not None
        try:
            (line,) = [
                r.getMessage() for r in caplog.records if "console_listening" in r.getMessage()
            ]
            port = runner.addresses[0][1]
            assert f"http://127.0.0.1:{port}/" in line
            taken = build_app(config_factory(**console_section(port=port)))[RUNTIME]
            with pytest.raises(OSError, match="address already in use"):
                await listener.start(taken)
            assert any("console_cannot_listen" in r.getMessage() for r in caplog.records)
        finally:
            await runner.cleanup()

    async def test_storage_down_is_a_page_with_the_headers(self, bridge: Bridge) -> None:
        assert await sign_in(bridge.console) == 303
        await bridge.webhooks.app[RUNTIME].store.close()
        answer = await bridge.console.get("/")
        assert answer.status == 503
        assert "storage is unavailable" in await answer.text()
        assert answer.headers["Content-Security-Policy"] == CSP
        assert answer.headers["Cache-Control"] == "no-store"


class TestOnPostgres:
    async def test_overview_webhook_page_and_replay(
        self,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
        postgres: pgcluster.Cluster,
    ) -> None:
        """The same pages over the PostgreSQL store: they use the operator methods only."""
        storage = {"url": postgres.new_database()}
        config = config_factory(fake_segment.url, storage=storage, **console_section())
        app = build_app(config)
        bridge = Bridge(
            await aiohttp_client(app), await aiohttp_client(build_console(app[RUNTIME])), config
        )
        delivered = await bridge.post("attempt.completed", attempt_completed(1, user="ada"))
        await fake_segment.wait_for(1)
        letter = await TestReplay().dead_message(bridge, fake_segment)
        assert await sign_in(bridge.console) == 303
        page = await (await bridge.console.get(f"/events/{delivered['webhook_id']}")).text()
        assert '"userId": "ada"' in html.unescape(page)  # the message as sent, indented
        assert (
            delivered["webhook_id"] in await (await bridge.console.get("/events?user=ada")).text()
        )
        token = await csrf_of(bridge.console)
        form = {"csrf": token, "id": str(letter), "confirm": "yes"}
        done = await bridge.console.post("/dead-letters/replay", data=form)
        assert "Replayed 1 dead letter(s) as 1 message(s)" in await done.text()
        await fake_segment.wait_for(2)


class TestDestinations:
    async def test_a_paused_destination_says_until_when_and_why(
        self,
        aiohttp_client: MakeClient,
        fake_segment: FakeSegment,
        config_factory: Callable[..., Config],
    ) -> None:
        retry = {"initial_backoff_secs": 60, "max_backoff_secs": 120}
        config = config_factory(
            fake_segment.url,
            delivery={"batch": {"timeout_secs": 0.01}, "retry": retry},
            routing={"destinations": {"school_b": {"portal_ids": ["portal-b"]}}},
            **console_section(),
        )
        app = build_app(config)
        bridge = Bridge(
            await aiohttp_client(app), await aiohttp_client(build_console(app[RUNTIME])), config
        )
        fake_segment.fail(503, times=1)
        await bridge.post("attempt.completed", attempt_completed(1))
        assert await sign_in(bridge.console) == 303
        live = ""

        async def paused() -> bool:
            nonlocal live
            live = await (await bridge.console.get("/overview/live")).text()
            return "state-paused" in live

        await polled(paused)
        assert "paused</span> until" in live
        assert "HTTP 503" in live
        assert "state-dry-run" in live  # school_b has no write key
