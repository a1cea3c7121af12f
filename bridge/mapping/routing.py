"""Which Segment destination a webhook goes to, chosen by its sub-portal or portal.

Order, most specific first: a destination listing the webhook's sub-portal id, then one listing
its portal id, then ``routing.default_destination`` (``default``, the ``segment`` section). With
``default_destination: null`` an unmatched webhook is a dead letter (``no_destination``): for a
bridge shared by several schools, sending one school's events to another's workspace is worse
than holding them. The configuration refuses an id claimed by two destinations, so the choice
never depends on the order of the YAML.
"""

from __future__ import annotations

from bridge.config import DEFAULT_DESTINATION, Config, RoutingConfig
from bridge.errors import UnmappableError


def route(routing: RoutingConfig, portal_id: str | None, sub_portal_id: str | None) -> str:
    """The destination name for a webhook of this portal / sub-portal."""
    if sub_portal_id is not None:
        for name, destination in routing.destinations.items():
            if sub_portal_id in destination.sub_portal_ids:
                return name
    if portal_id is not None:
        for name, destination in routing.destinations.items():
            if portal_id in destination.portal_ids:
                return name
    if routing.default_destination is None:
        raise UnmappableError(
            "no_destination",
            f"portal {portal_id!r} / sub-portal {sub_portal_id!r} matches no routing destination "
            "and routing.default_destination is null",
        )
    return routing.default_destination


def describe_routing(config: Config) -> list[str]:
    """Human lines for ``check-config``: each destination, what it takes, and the fallback."""
    default_key = "write key set" if config.segment.write_key else "no write key: dry-run"
    lines = [
        f"{DEFAULT_DESTINATION}: {config.segment.endpoint} ({default_key}; the segment section)"
    ]
    for name, destination in config.routing.destinations.items():
        key = "write key set" if destination.write_key else "no write key"
        matches = []
        if destination.sub_portal_ids:
            matches.append("sub-portals " + ", ".join(destination.sub_portal_ids))
        if destination.portal_ids:
            matches.append("portals " + ", ".join(destination.portal_ids))
        takes = "; ".join(matches) if matches else "nothing matches it (no portal_ids)"
        lines.append(f"{name}: {destination.endpoint} ({key}) <- {takes}")
    fallback = config.routing.default_destination
    if fallback is None:
        lines.append("anything else: dead letter (no_destination)")
    else:
        lines.append(f"anything else: {fallback}")
    return lines
