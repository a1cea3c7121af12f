"""``synap-bridge``, the command line: ``main`` parses and dispatches, ``ops`` holds the operator
commands over a store, ``events`` the event search, ``try_code`` the sample webhooks,
``synap_sync`` (with its pure ``synap_plan``) Synap's subscriptions. May import anything in the
bridge: it is an edge, like ``serve``.
"""

from bridge.cli.command import main

__all__ = ["main"]
