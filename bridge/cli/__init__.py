"""``synap-bridge``, the command line: ``main`` parses and dispatches, ``ops`` holds the operator
commands over a store. May import anything in the bridge: it is an edge, like ``serve``.
"""

from bridge.cli.command import main

__all__ = ["main"]
