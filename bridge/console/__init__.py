"""The operator's console: a read-mostly web page on its own listener (``console.host:port``).

Who it is for: the people who ask "did Ada's exam result reach Segment, and if not why?"
without a shell on the host. It shows the pipeline now (overview), finds a webhook and tells its
story, and replays dead letters. Server-rendered HTML (Jinja2, autoescaped), a few lines of
JavaScript served by the bridge (no CDN, no build), behind its own credentials and session.

Modules: ``app`` (the application and its routes), ``listener`` (start it beside ``serve``),
``security`` (headers, sign-in, sessions, CSRF, the failed-login limit), ``views`` (handlers),
``pages`` (what a page shows, from the operator store methods), ``traffic`` (the last hour's
counts, sampled in-process) and ``chart`` (its SVG). It may import ``bridge.config``,
``bridge.store``, ``bridge.explain``, ``bridge.mapping.intake`` (the remapper a replay uses),
``bridge.cli.events`` (how a time in a search is read),
``bridge.receive.runtime`` and ``bridge.logs``; nothing imports it but ``bridge.serve``.

Store reads go through the store's operator methods (``stats``, ``find_events``, ``event``,
``dead_letters``, ``dead_letter``): on SQLite they run on the reader thread, never the writer
thread that intake commits on; only ``replay`` writes.
"""
