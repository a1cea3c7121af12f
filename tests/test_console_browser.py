"""The console as a person uses it: a real headless Chromium against a real ``serve``.

The bridge runs as a subprocess (tests/process.py) delivering to the strict fake Segment; the
browser is Debian's ``chromium`` driven through ``chromedriver`` by Selenium (``make
browser-deps`` installs both). Selenium's calls block, so each runs in a thread: the event loop
meanwhile serves the fake Segment and reads the bridge's log.

The run also takes the screenshots of the README and docs/operations.md
(docs/console-overview.png, docs/console-webhook.png).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.conftest import PASSWORD, USER, WRITE_KEY, attempt_completed, basic_auth, polled
from tests.fakes import FakeSegment
from tests.process import REPO, BridgeProcess, write_config

pytestmark = pytest.mark.browser

CONSOLE_USER = "support"
CONSOLE_PASSWORD = "a console password of its own"
DOCS = REPO / "docs"
INSTALL = "make browser-deps (Debian/Ubuntu: sudo apt-get install chromium chromium-driver)"
T = TypeVar("T")
#: True on a phone-wide window whose page is no wider than the window (no sideways scrolling).
NARROW = (
    "return window.innerWidth <= 400 && document.documentElement.scrollWidth <= window.innerWidth"
)


def chromium() -> webdriver.Chrome:
    """Headless Chromium through Debian's chromedriver (never Selenium Manager's downloads)."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail(f"the console's browser tests need Chromium and its driver: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,1000")
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


@dataclass
class Session:
    bridge: BridgeProcess
    console_url: str
    driver: webdriver.Chrome
    fake: FakeSegment

    async def do(self, action: Callable[[webdriver.Chrome], T]) -> T:
        """One browser action, off the event loop."""
        return await asyncio.to_thread(action, self.driver)

    async def until(self, check: Callable[[webdriver.Chrome], bool], within: float = 15.0) -> None:
        """Wait, bounded, for what the page shows; the overview's live part is replaced every
        few seconds, so an element found a moment ago may be gone: look again."""

        def look(driver: webdriver.Chrome) -> bool:
            try:
                return check(driver)
            except (StaleElementReferenceException, NoSuchElementException):
                return False

        async def ask() -> bool:
            return await self.do(look)

        await polled(ask, within)

    async def post(self, code: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.bridge.url}/webhooks/synap/{code}"
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, data=orjson.dumps(body), headers=basic_auth()) as answer,
        ):
            assert answer.status in (200, 202), await answer.text()
            result: dict[str, Any] = await answer.json()
            return result

    async def sign_in(self, username: str, password: str) -> None:
        def fill(driver: webdriver.Chrome) -> None:
            driver.get(f"{self.console_url}/login")
            driver.find_element(By.ID, "username").send_keys(username)
            driver.find_element(By.ID, "password").send_keys(password)
            driver.find_element(By.CSS_SELECTOR, "form.login button").click()

        await self.do(fill)

    async def screenshot(self, name: str) -> None:
        path = DOCS / name
        await self.do(lambda d: d.save_screenshot(str(path)))
        assert path.stat().st_size > 10_000


async def console_url(bridge: BridgeProcess) -> str:
    async def listening() -> bool:
        return bool(bridge.events("console_listening"))

    await polled(listening, 20)
    url: str = bridge.events("console_listening")[0]["url"]
    return url.rstrip("/")


@pytest.fixture
async def session(tmp_path: Path, fake_segment: FakeSegment) -> AsyncIterator[Session]:
    data = {
        "server": {"port": 0},
        "auth": {"username": USER, "password": PASSWORD},
        "segment": {"write_key": WRITE_KEY, "endpoint": fake_segment.url},
        "storage": {"path": str(tmp_path / "bridge.db")},
        "delivery": {"batch": {"timeout_secs": 0.01}, "retry": {"initial_backoff_secs": 0.05}},
        "logging": {"format": "json"},
        "console": {"port": 0, "username": CONSOLE_USER, "password": CONSOLE_PASSWORD},
    }
    bridge = BridgeProcess(write_config(tmp_path / "config.yaml", data))
    driver = None
    try:
        await bridge.start()
        url = await console_url(bridge)
        driver = await asyncio.to_thread(chromium)
        yield Session(bridge, url, driver, fake_segment)
    finally:
        if driver is not None:
            await asyncio.to_thread(driver.quit)
        if bridge.proc is not None and bridge.proc.returncode is None:
            assert await bridge.terminate() == 0  # a clean stop (and its coverage data)
        await bridge.close()


def on_page(path: str) -> Callable[[webdriver.Chrome], bool]:
    return lambda d: d.current_url.split("?")[0].endswith(path)


class TestConsoleInABrowser:
    async def test_the_webhook_password_does_not_sign_in(self, session: Session) -> None:
        await session.sign_in(USER, PASSWORD)
        await session.until(lambda d: "Wrong username or password" in d.page_source)
        assert (await session.do(lambda d: d.current_url)).endswith("/login")
        await session.do(lambda d: d.get(f"{session.console_url}/"))
        await session.until(on_page("/login"))  # still signed out
        assert session.bridge.events("console_login_failed")

    async def test_the_overview_changes_while_webhooks_arrive(self, session: Session) -> None:
        await session.sign_in(CONSOLE_USER, CONSOLE_PASSWORD)
        await session.until(on_page("/"))
        await session.until(lambda d: d.find_element(By.ID, "received").text == "0")
        for n in range(12):
            await session.post("attempt.completed", attempt_completed(n, user=f"student-{n}"))
        await session.fake.wait_for(12)
        # Then one message alone in its batch, which Segment refuses (a dead letter), and a
        # webhook without a user (a dead letter of the whole webhook).
        session.fake.fail(400, times=1)
        await session.post("attempt.completed", attempt_completed("x", user="student-x"))
        lost = attempt_completed("nouser")
        del lost["user"]
        await session.post("attempt.completed", lost)
        # No reload: the page's script fetches the live part.
        await session.until(lambda d: d.find_element(By.ID, "received").text == "14")
        await session.until(lambda d: d.find_element(By.ID, "delivered").text == "12")
        await session.until(lambda d: d.find_element(By.ID, "dead").text == "2")
        assert "live" in await session.do(
            lambda d: d.find_element(By.CSS_SELECTOR, ".destinations").text
        )
        await session.screenshot("console-overview.png")
        # A phone's width: one column, nothing wider than the screen.
        await session.do(lambda d: d.set_window_size(390, 900))
        await session.until(lambda d: d.execute_script(NARROW))

    async def test_search_a_user_and_open_the_webhook(self, session: Session) -> None:
        posted = await session.post("attempt.completed", attempt_completed(5, user="ada-lovelace"))
        await session.post("attempt.completed", attempt_completed(6, user="someone-else"))
        await session.fake.wait_for(2)
        await session.sign_in(CONSOLE_USER, CONSOLE_PASSWORD)
        await session.until(on_page("/"))

        def search(driver: webdriver.Chrome) -> None:
            driver.find_element(By.LINK_TEXT, "Find an event").click()
            driver.find_element(By.ID, "user").send_keys("ada-lovelace")
            driver.find_element(By.CSS_SELECTOR, "form.search button").click()

        await session.do(search)
        await session.until(lambda d: "1 webhook(s)" in d.page_source)
        found = await session.do(
            lambda d: d.find_element(By.ID, "results-h").find_element(By.XPATH, "..").text
        )
        assert posted["webhook_id"] in found
        assert "someone-else" not in found
        assert "delivered" in found
        await session.do(lambda d: d.find_element(By.LINK_TEXT, posted["webhook_id"]).click())
        await session.until(on_page(f"/events/{posted['webhook_id']}"))
        page = await session.do(lambda d: d.find_element(By.ID, "main").text)
        assert "Raw webhook body, as received" in page
        assert "Exactly as sent to Segment" in page
        assert '"userId": "ada-lovelace"' in page
        assert "accepted by Segment" in page
        await session.screenshot("console-webhook.png")

    async def test_replay_a_dead_letter_until_segment_has_it(self, session: Session) -> None:
        session.fake.fail(400, times=1)  # Segment refuses the one message: a dead letter
        await session.post("attempt.completed", attempt_completed(9, user="grace-hopper"))
        await session.sign_in(CONSOLE_USER, CONSOLE_PASSWORD)
        await session.until(on_page("/"))
        await session.until(lambda d: d.find_element(By.ID, "dead").text == "1")
        await session.do(lambda d: d.find_element(By.LINK_TEXT, "Dead letters").click())
        await session.until(lambda d: "rejected_by_segment" in d.page_source)

        # A form without its CSRF token (as a forged one would be) is refused, nothing replayed.
        def forged(driver: webdriver.Chrome) -> None:
            driver.find_element(By.CSS_SELECTOR, "form.selection input[type=checkbox]").click()
            driver.execute_script(
                "document.querySelector('form.selection input[name=csrf]').remove()"
            )
            driver.find_element(By.CSS_SELECTOR, "form.selection .actions button").click()

        await session.do(lambda d: d.set_window_size(390, 900))  # a phone: nothing too wide
        await session.until(lambda d: d.execute_script(NARROW))
        await session.do(lambda d: d.set_window_size(1280, 1000))
        await session.do(forged)
        await session.until(lambda d: "CSRF" in d.page_source)
        assert session.fake.unique == 0

        def choose(driver: webdriver.Chrome) -> None:
            driver.get(f"{session.console_url}/dead-letters")
            driver.find_element(By.CSS_SELECTOR, "form.selection input[type=checkbox]").click()
            driver.find_element(By.CSS_SELECTOR, "form.selection .actions button").click()

        await session.do(choose)
        await session.until(lambda d: "Yes, replay" in d.page_source)
        assert session.fake.unique == 0  # asked first, nothing done yet
        await session.do(lambda d: d.find_element(By.ID, "confirm-replay").click())
        await session.until(lambda d: "Replayed 1 dead letter(s) as 1 message(s)" in d.page_source)
        await session.fake.wait_for(1)
        assert session.fake.messages[0]["userId"] == "grace-hopper"
        (audit,) = session.bridge.events("console_replay")
        assert audit["user"] == CONSOLE_USER
