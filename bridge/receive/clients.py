"""Who sent a request: the peer address, or the forwarded one only when a trusted proxy says so.

``X-Forwarded-For`` is anyone's to write, so it is believed only from the proxies listed in
``server.trusted_proxies`` (CIDRs): the chain is read from the right, skipping trusted hops, and
the first address that is not a trusted proxy is the client. Without trusted proxies the peer
address is the answer, whatever the headers say.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Hops read from a forwarded chain at most; a longer chain is someone padding it.
MAX_HOPS = 16


def client_address(request: web.BaseRequest, trusted: Sequence[Network]) -> str:
    peer = request.remote or "unknown"
    if not trusted or not _trusted(peer, trusted):
        return peer
    chain = ",".join(request.headers.getall("X-Forwarded-For", []))
    hops = [hop.strip() for hop in chain.split(",") if hop.strip()][-MAX_HOPS:]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop if _is_address(hop) else peer
    return hops[0] if hops and _is_address(hops[0]) else peer


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
