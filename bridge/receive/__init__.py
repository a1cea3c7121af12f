"""Stage 1, the HTTP edge: authenticate, bound, decode, hand to mapping and storage, answer.

Holds the webhook endpoint, the health and metrics endpoints, Basic authentication (one
``guard`` for webhooks and ``/metrics``), the error answers (``answers``: one JSON shape and
the middleware), the client address (``clients``), log throttling (``throttle``), the bounds on
connections (``connections``), the backpressure rules and the state one running bridge shares
between handlers (``runtime``).
May import: ``bridge.config``, ``bridge.errors``, ``bridge.logs``, ``bridge.metrics``,
``bridge.mapping`` (intake), ``bridge.synap`` (codes) and the ``bridge.store`` contract; the
delivery loop only as a type (``Runtime.delivery``, which the endpoint wakes when messages
arrive); never a store backend.
"""
