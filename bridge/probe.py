"""The container's HEALTHCHECK: ``python -m bridge.probe`` asks ``/healthz`` where serve listens.

Why a module and not a one-liner in the Dockerfile: the probe must reach the address the server
is bound to. A wildcard bind (``0.0.0.0``) answers on IPv4 loopback, but ``::`` is IPv6 only
(asyncio sets ``IPV6_V6ONLY``), so a probe of 127.0.0.1 called a healthy bridge "unhealthy".
A specific address answers only there. The image sets ``BRIDGE_SERVER__HOST`` and
``BRIDGE_SERVER__PORT``, and the environment wins over any configuration file, so reading those
two variables is reading what serve uses.

Standard library only, nothing else imported: it runs every 30 s and must cost a few
milliseconds. Exit 0 when ``/healthz`` answers 2xx within the timeout, 1 otherwise (with the
reason on stderr, which ``docker inspect`` shows in the health log).
"""

from __future__ import annotations

import os
import sys
import urllib.request

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = "8080"
TIMEOUT_SECS = 4.0

#: A wildcard bind is probed on the loopback address of its own family.
WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}  # noqa: S104


def target(host: str, port: str) -> str:
    """The ``/healthz`` URL for a server bound to ``host``:``port``."""
    host = host.strip()
    address = WILDCARDS.get(host, host).strip("[]")
    if ":" in address:  # an IPv6 literal needs brackets in a URL
        address = f"[{address}]"
    return f"http://{address}:{int(port)}/healthz"


def main(environ: dict[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    url = target(
        env.get("BRIDGE_SERVER__HOST", DEFAULT_HOST), env.get("BRIDGE_SERVER__PORT", DEFAULT_PORT)
    )
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECS) as answer:  # noqa: S310 (http only)
            status = int(answer.status)
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if not 200 <= status < 300:
        print(f"unhealthy: {url}: status {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
