"""Routing: which Segment destination each webhook goes to, and what check-config shows."""

from __future__ import annotations

from typing import Any

import pytest

from bridge import config as config_module
from bridge.config import Config
from bridge.errors import ConfigError, UnmappableError
from bridge.mapping.routing import describe_routing, route
from bridge.mapping.webhook import map_webhook
from tests.test_mapping import RECEIVED, load

DESTINATIONS: dict[str, Any] = {
    "north": {
        "write_key": "wk-north",
        "endpoint": "https://events.eu1.segmentapis.com",
        "sub_portal_ids": ["sub_north"],
    },
    "kings": {"write_key": "wk-kings", "portal_ids": ["portal_kings", "portal_kings_2"]},
    "other": {"portal_ids": ["portal_other"], "sub_portal_ids": ["sub_other"]},
}


def routed(default: str | None = "default", **extra: Any) -> Config:
    routing = {"destinations": DESTINATIONS, "default_destination": default}
    return config_module.parse({"routing": routing, **extra})


class TestRoute:
    @pytest.mark.parametrize(
        ("portal", "sub_portal", "expected"),
        [
            ("portal_kings", None, "kings"),
            ("portal_kings_2", "sub_unknown", "kings"),
            ("portal_kings", "sub_north", "north"),  # the sub-portal is more specific
            ("portal_other", "sub_north", "north"),
            (None, "sub_other", "other"),
            ("portal_unknown", None, "default"),
            (None, None, "default"),
        ],
    )
    def test_most_specific_match_wins(
        self, portal: str | None, sub_portal: str | None, expected: str
    ) -> None:
        assert route(routed().routing, portal, sub_portal) == expected

    def test_unmatched_goes_to_a_named_default(self) -> None:
        assert route(routed("other").routing, "portal_unknown", None) == "other"

    def test_unmatched_without_default_is_a_dead_letter(self) -> None:
        with pytest.raises(UnmappableError) as caught:
            route(routed(None).routing, "portal_unknown", "sub_unknown")
        assert caught.value.code == "no_destination"
        assert "portal_unknown" in caught.value.detail

    @pytest.mark.parametrize(
        ("routing", "words"),
        [
            (
                {"destinations": {"a": {"portal_ids": ["p"]}, "b": {"portal_ids": ["p"]}}},
                "portal_id 'p' is claimed by both 'a' and 'b'",
            ),
            (
                {"destinations": {"a": {"sub_portal_ids": ["s"]}, "b": {"sub_portal_ids": ["s"]}}},
                "sub_portal_id 's' is claimed",
            ),
            ({"default_destination": "nowhere"}, "'nowhere' is not defined"),
            ({"destinations": {"default": {}}}, "reserved"),
        ],
    )
    def test_ambiguous_or_dangling_routing_is_a_config_error(
        self, routing: dict[str, Any], words: str
    ) -> None:
        with pytest.raises(ConfigError) as caught:
            config_module.parse({"routing": routing})
        assert any(words in problem for problem in caught.value.problems), caught.value.problems


class TestWebhooksAreRouted:
    def test_every_message_of_a_webhook_goes_to_its_destination(self) -> None:
        mapped = map_webhook("user.addedToGroup", load("user.addedToGroup"), RECEIVED, routed())
        assert [message.destination for message in mapped.messages] == ["north", "north"]

    def test_flat_payload_routes_by_the_url_hint(self) -> None:
        body = load("user.registered")
        del body["subPortalId"]
        config = routed()
        hinted = map_webhook("user.registered", body, RECEIVED, config, "portal_kings")
        assert {message.destination for message in hinted.messages} == {"kings"}
        plain = map_webhook("user.registered", body, RECEIVED, config)
        assert {message.destination for message in plain.messages} == {"default"}

    def test_default_portal_id_routes_flat_payloads(self) -> None:
        body = load("store.purchase")
        config = routed(mapping={"default_portal_id": "portal_other"})
        mapped = map_webhook("store.purchase", body, RECEIVED, config)
        assert mapped.portal_id == "portal_other"
        assert mapped.messages[0].destination == "other"

    def test_unroutable_webhook_is_a_dead_letter(self) -> None:
        body = load("invite.sent")
        body["portal"]["id"] = "portal_unknown"
        with pytest.raises(UnmappableError) as caught:
            map_webhook("invite.sent", body, RECEIVED, routed(None))
        assert caught.value.code == "no_destination"

    def test_the_portal_is_part_of_the_message_id(self) -> None:
        body = load("invite.sent")
        first = map_webhook("invite.sent", body, RECEIVED, routed()).messages[0].message_id
        body["portal"]["id"] = "portal_kings_2"
        second = map_webhook("invite.sent", body, RECEIVED, routed()).messages[0].message_id
        assert first != second


class TestDescribe:
    def test_lines_for_check_config(self) -> None:
        config = routed(None, segment={"write_key": "secret-default"})
        lines = describe_routing(config)
        assert lines == [
            "default: https://api.segment.io (write key set; the segment section)",
            "north: https://events.eu1.segmentapis.com (write key set) <- sub-portals sub_north",
            "kings: https://api.segment.io (write key set) <- portals portal_kings, portal_kings_2",
            "other: https://api.segment.io (no write key) <- sub-portals sub_other; portals "
            "portal_other",
            "anything else: dead letter (no_destination)",
        ]
        assert not any("secret" in line or "wk-" in line for line in lines)

    def test_default_only(self) -> None:
        lines = describe_routing(config_module.parse({}))
        assert lines == [
            "default: https://api.segment.io (no write key: dry-run; the segment section)",
            "anything else: default",
        ]
