"""``synap-bridge synap sync``: the real CLI against the strict fake Synap API (tests/fakesynap.py)
and, for the password rotation, a real ``synap-bridge serve``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.cli import synap_plan
from bridge.synap.api import SynapApi, SynapApiError
from tests.conftest import PASSWORD, USER, basic_auth, fixture_body
from tests.fakesynap import FakeSynap
from tests.process import BridgeProcess, write_config
from tests.test_cli_ops import Ran, load, run_cli

TOKEN = "p:test-personal-access-token"
PUBLIC = "https://bridge.example.org"
PREFIX = f"{PUBLIC}/webhooks/synap/"
NEXT = "the next password, long and random"


def data(tmp_path: Path, api_url: str, **synap: Any) -> dict[str, Any]:
    return {
        "server": {"port": 0},
        "auth": {"username": USER, "password": PASSWORD},
        "storage": {"path": str(tmp_path / "bridge.db")},
        "logging": {"format": "json"},
        "mapping": {"codes": {"store.purchase": {"enabled": False}}},
        "synap": {"api_url": api_url, "public_url": PUBLIC, "token": TOKEN, **synap},
    }


def configure(tmp_path: Path, api_url: str, **synap: Any) -> Path:
    return write_config(tmp_path / "config.yaml", data(tmp_path, api_url, **synap))


def wanted_codes(path: Path) -> list[str]:
    return synap_plan.wanted_codes(load(path))


def by_code(fake: FakeSynap) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for held in fake.subscriptions.values():
        if held.target_url.startswith(PREFIX):
            found.setdefault(held.event_name, []).append(held.target_url)
    return found


def secrets_absent(ran: Ran) -> None:
    for secret in (TOKEN, PASSWORD, NEXT, TOKEN.removeprefix("p:")):
        assert secret not in ran.out


class TestSync:
    async def test_dry_run_then_create_then_nothing_to_do(self, tmp_path: Path) -> None:
        async with FakeSynap(TOKEN) as fake:
            path = configure(tmp_path, fake.url)
            codes = wanted_codes(path)
            assert "store.purchase" not in codes
            assert "assignment.complete" not in codes
            assert "exam.resultsReleased" in codes
            assert "assignment.completed" in codes
            dry = await run_cli(path, "synap", "sync", "--dry-run")
            assert dry.code == 0, dry.out
            assert fake.writes() == []
            assert dry.out.count("  create ") == len(codes)
            assert f"{len(codes)} to create, 0 to update, 0 to leave, 0 to remove" in dry.out
            assert "dry run: nothing changed" in dry.out
            secrets_absent(dry)
            ran = await run_cli(path, "synap", "sync")
            assert ran.code == 0, ran.out
            secrets_absent(ran)
            assert by_code(fake) == {code: [PREFIX + code] for code in codes}
            held = list(fake.subscriptions.values())
            assert {(h.username, h.password, h.active) for h in held} == {(USER, PASSWORD, True)}
            again = await run_cli(path, "synap", "sync")
            assert f"0 to create, 0 to update, {len(codes)} to leave, 0 to remove" in again.out
            assert len(fake.subscriptions) == len(codes)

    async def test_drift_is_repaired_and_others_left_alone(self, tmp_path: Path) -> None:
        async with FakeSynap(TOKEN) as fake:
            path = configure(tmp_path, fake.url)
            codes = wanted_codes(path)
            for code in codes[2:]:
                fake.add(code, PREFIX + code, USER, PASSWORD)
            twin = fake.add(codes[2], PREFIX + codes[2], USER, PASSWORD)
            asleep = fake.add(codes[0], PREFIX + codes[0], USER, PASSWORD, active=False)
            hinted = codes[3]
            for held in list(fake.subscriptions.values()):
                if held.event_name == hinted:
                    held.target_url += "?portal=p-1"
            wrong = fake.add("attempt.started", PREFIX + "exam.started", USER, PASSWORD)
            stray = fake.add("store.purchase", PREFIX + "store.purchase", USER, PASSWORD)
            foreign = fake.add("attempt.completed", "https://other.example.org/hook", "x", "y")
            dry = await run_cli(path, "synap", "sync", "--dry-run")
            assert f"update  {codes[0]:30} (id {asleep}): inactive" in dry.out
            assert f"create  {codes[1]:30}: missing" in dry.out
            for removed in (twin, wrong, stray):
                assert f"(id {removed})" in dry.out
            assert "1 other subscription(s) point elsewhere: left alone" in dry.out
            ran = await run_cli(path, "synap", "sync")
            assert ran.code == 0, ran.out
            assert "remove by hand" not in ran.out
            wanted = {code: [PREFIX + code] for code in codes}
            wanted[hinted] = [PREFIX + hinted + "?portal=p-1"]  # the operator's hint is kept
            assert by_code(fake) == wanted
            assert fake.subscriptions[asleep].active
            assert foreign in fake.subscriptions  # not the bridge's: untouched
            assert fake.subscriptions[foreign].password == "y"
            # Creates and updates went before the removals.
            methods = [m for m, _ in fake.writes()]
            assert methods == sorted(methods, key=lambda m: m == "DELETE")

    async def test_fallback_when_list_update_delete_are_refused(self, tmp_path: Path) -> None:
        async with FakeSynap(TOKEN, lists=False, changes=False) as fake:
            path = configure(tmp_path, fake.url)
            codes = wanted_codes(path)
            old = fake.add(codes[0], PREFIX + codes[0], USER, PASSWORD)
            dry = await run_cli(path, "synap", "sync", "--dry-run")
            assert dry.code == 0, dry.out
            assert "Synap's API does not list subscriptions (405): every code is created" in dry.out
            assert "remove the older ones by hand" in dry.out
            assert fake.writes() == []
            ran = await run_cli(path, "synap", "sync")
            assert ran.code == 0, ran.out
            assert len(fake.subscriptions) == len(codes) + 1
            assert old in fake.subscriptions
            assert sorted(by_code(fake)[codes[0]]) == [PREFIX + codes[0]] * 2

    async def test_fallback_when_only_update_and_delete_are_refused(self, tmp_path: Path) -> None:
        async with FakeSynap(TOKEN, changes=False) as fake:
            path = configure(tmp_path, fake.url)
            codes = wanted_codes(path)
            inactive = fake.add(codes[1], PREFIX + codes[1], USER, PASSWORD, active=False)
            for code in codes[2:]:
                fake.add(code, PREFIX + code, USER, PASSWORD)
            stray = fake.add("store.purchase", PREFIX + "store.purchase", USER, PASSWORD)
            ran = await run_cli(path, "synap", "sync")
            assert ran.code == 0, ran.out
            assert "Synap's API does not update subscriptions: creating new ones" in ran.out
            hand = ran.out[ran.out.index("remove by hand") :]
            assert f"id {inactive}  {codes[1]}  {PREFIX}{codes[1]}" in hand
            assert f"id {stray}  store.purchase  {PREFIX}store.purchase" in hand
            assert hand.count("  id ") == 2
            active = [h.event_name for h in fake.subscriptions.values() if h.active]
            assert sorted(active) == sorted([*codes, "store.purchase"])

    @pytest.mark.parametrize("how", ["json", "text"])
    async def test_an_api_that_echoes_the_request_shows_no_secret(
        self, tmp_path: Path, how: str
    ) -> None:
        """Before, the error text was printed verbatim: the Bearer token and the webhook
        password came back in the CLI's output. Now an error is its status and its codes."""
        async with FakeSynap(TOKEN) as fake:
            fake.echo = how
            ran = await run_cli(configure(tmp_path, fake.url), "synap", "sync")
        assert ran.code == 1
        secrets_absent(ran)
        assert "Bearer" not in ran.out
        if how == "json":  # the code that looks like a code is shown, the one with text is not
            assert "HTTP 422: error code invalid_attribute" in ran.out
            assert "echo" not in ran.out
        else:
            assert "HTTP 400: no error code" in ran.out

    async def test_token_missing_refused_and_never_shown(self, tmp_path: Path) -> None:
        async with FakeSynap(TOKEN) as fake:
            path = write_config(
                tmp_path / "config.yaml",
                {**data(tmp_path, fake.url), "synap": {"api_url": fake.url, "public_url": PUBLIC}},
            )
            missing = await run_cli(path, "synap", "sync", "--dry-run")
            assert missing.code == 78
            assert "BRIDGE_SYNAP__TOKEN or SYNAP_API_TOKEN" in missing.out
            assert fake.requests == []
            wrong = configure(tmp_path, fake.url, token="p:revoked-token")
            refused = await run_cli(wrong, "synap", "sync")
            assert refused.code == 1
            assert "HTTP 401: the token was refused" in refused.out
            assert "revoked-token" not in refused.out
            assert fake.writes() == []

    async def test_plain_http_to_another_host_is_a_config_error(self, tmp_path: Path) -> None:
        path = configure(tmp_path, "http://api.synap.ac/v3")
        ran = await run_cli(path, "synap", "sync", "--dry-run")
        assert ran.code == 78

    async def test_every_call_has_a_total_deadline(self, tmp_path: Path) -> None:
        async with FakeSynap(TOKEN) as fake:
            fake.hang = True
            path = configure(tmp_path, fake.url, timeout_secs=0.5)
            started = time.monotonic()
            ran = await run_cli(path, "synap", "sync")
            assert ran.code == 1
            assert "no answer within 0.5 s" in ran.out
            assert time.monotonic() - started < 10

    async def test_pages_are_followed(self) -> None:
        async with FakeSynap(TOKEN) as fake:
            for n in range(12):
                fake.add(f"code{n}", f"https://elsewhere.example.org/{n}")
            async with SynapApi(fake.url, TOKEN, 5) as api:
                listed = await api.subscriptions()
            assert len(listed) == 12
            assert [m for m, _ in fake.requests] == ["GET"] * 3


class TestRotation:
    async def test_without_next_password_a_fresh_one_is_shown_once(self, tmp_path: Path) -> None:
        async with FakeSynap(TOKEN) as fake:
            path = configure(tmp_path, fake.url)
            ran = await run_cli(path, "synap", "sync", "--rotate-password")
            assert ran.code == 3
            assert fake.requests == []
            assert "BRIDGE_AUTH__NEXT_PASSWORD" in ran.out
            shown = [line.strip() for line in ran.out.splitlines() if line.startswith("    ")]
            assert len(shown) == 1
            assert len(shown[0]) >= 40
            again = await run_cli(path, "synap", "sync", "--rotate-password")
            assert shown[0] not in again.out  # generated each time, kept nowhere
            secrets_absent(ran)

    async def test_rotation_with_a_bridge_that_accepts_both(self, tmp_path: Path) -> None:
        serving = data(tmp_path, "https://api.synap.ac/v3")
        serving["auth"]["next_password"] = NEXT
        bridge = BridgeProcess(write_config(tmp_path / "serve.yaml", serving))
        try:
            url = f"http://127.0.0.1:{await bridge.start()}"
            body = fixture_body("attempt.completed")
            async with aiohttp.ClientSession() as session:
                for password, status in ((PASSWORD, 200), (NEXT, 200), ("guess", 401)):
                    async with session.post(
                        f"{url}/webhooks/synap/attempt.completed",
                        json=body,
                        headers=basic_auth(USER, password),
                    ) as answer:
                        assert answer.status == status, password
            async with FakeSynap(TOKEN) as fake:
                path = configure(tmp_path, fake.url, public_url=url)
                codes = wanted_codes(path)
                for code in codes:
                    fake.add(code, f"{url}/webhooks/synap/{code}", USER, PASSWORD)
                with_next = data(tmp_path, fake.url, public_url=url)
                with_next["auth"]["next_password"] = NEXT
                path = write_config(tmp_path / "cli.yaml", with_next)
                ran = await run_cli(path, "synap", "sync", "--rotate-password")
                assert ran.code == 0, ran.out
                secrets_absent(ran)
                assert f"0 to create, {len(codes)} to update, 0 to leave, 0 to remove" in ran.out
                assert {h.password for h in fake.subscriptions.values()} == {NEXT}
                assert len(fake.subscriptions) == len(codes)
        finally:
            await bridge.close()

    async def test_not_rotated_while_the_bridge_refuses_the_new_password(
        self, tmp_path: Path
    ) -> None:
        bridge = BridgeProcess(
            write_config(tmp_path / "serve.yaml", data(tmp_path, "https://api.synap.ac/v3"))
        )
        try:
            url = f"http://127.0.0.1:{await bridge.start()}"
            async with FakeSynap(TOKEN) as fake:
                with_next = data(tmp_path, fake.url, public_url=url)
                with_next["auth"]["next_password"] = NEXT
                path = write_config(tmp_path / "cli.yaml", with_next)
                ran = await run_cli(path, "synap", "sync", "--rotate-password")
                assert ran.code == 1
                assert "refuses auth.next_password: set BRIDGE_AUTH__NEXT_PASSWORD" in ran.out
                assert fake.requests == []
        finally:
            await bridge.close()

    async def test_next_password_needs_a_password(self, tmp_path: Path) -> None:
        broken = data(tmp_path, "https://api.synap.ac/v3")
        broken["auth"] = {"next_password": NEXT}
        ran = await run_cli(write_config(tmp_path / "c.yaml", broken), "check-config")
        assert ran.code == 78


class TestSecrets:
    def test_token_from_either_variable(self, tmp_path: Path) -> None:
        from bridge.cli.synap_sync import token_of

        plain = load(write_config(tmp_path / "c.yaml", {}))
        assert token_of(plain, {}) is None
        assert token_of(plain, {"SYNAP_API_TOKEN": "p:env"}) == "p:env"
        named = load(configure(tmp_path, "https://api.synap.ac/v3"))
        assert token_of(named, {"SYNAP_API_TOKEN": "p:env"}) == TOKEN  # BRIDGE_SYNAP__TOKEN wins

    async def test_check_config_masks_the_token(self, tmp_path: Path) -> None:
        ran = await run_cli(configure(tmp_path, "https://api.synap.ac/v3"), "check-config")
        assert ran.code == 0
        secrets_absent(ran)
        assert "token: '***'" in ran.out

    def test_reprs_hide_secrets(self) -> None:
        from bridge.synap.api import Wanted

        wanted = Wanted("attempt.completed", PREFIX + "attempt.completed", USER, PASSWORD)
        assert PASSWORD not in repr(wanted)
        assert TOKEN not in repr(SynapApi("https://api.synap.ac/v3", TOKEN, 5))

    async def test_a_next_link_to_another_host_is_not_followed(self) -> None:
        async with FakeSynap(TOKEN) as fake:
            api = SynapApi(fake.url, TOKEN, 5)
            assert api._absolute("/v3/webhook-subscriptions?page=2").startswith(fake.url[:-3])
            with pytest.raises(SynapApiError, match="leaves Synap's API"):
                api._absolute("https://evil.example.org/v3/webhook-subscriptions")


class TestTheFakeIsStrict:
    """The fake refuses what a sloppy client would send, so passing against it means something."""

    async def test_refusals(self) -> None:
        async with FakeSynap(TOKEN) as fake, aiohttp.ClientSession() as session:
            url = f"{fake.url}/webhook-subscriptions"
            good = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/vnd.api+json"}
            attributes = {"eventName": "attempt.completed", "targetUrl": PREFIX + "x"}
            cases: list[tuple[dict[str, str], Any, int]] = [
                ({**good, "Authorization": "Bearer p:wrong"}, {}, 401),
                ({**good, "Content-Type": "application/json"}, {}, 415),
                (
                    {**good, "Accept": "application/vnd.api+json; ext=x"},
                    {"data": {"type": "WebhookSubscription", "attributes": attributes}},
                    406,
                ),
                (good, {"data": {"type": "Webhook", "attributes": attributes}}, 409),
                (good, {"data": {"type": "WebhookSubscription", "id": "1"}}, 403),
                (good, {"data": {"type": "WebhookSubscription", "attributes": {"x": 1}}}, 422),
                (
                    good,
                    {
                        "data": {
                            "type": "WebhookSubscription",
                            "attributes": {**attributes, "basicAuth": {"username": "u"}},
                        }
                    },
                    422,
                ),
            ]
            for headers, document, status in cases:
                async with session.post(url, json=document, headers=headers) as answer:
                    assert answer.status == status, (headers, document)
                    errors = (await answer.json(content_type=None))["errors"]
                    assert errors[0]["status"] == str(status)
            assert fake.subscriptions == {}
