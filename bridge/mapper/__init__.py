"""The mapping stage: keep first, judge after.

The receiver commits each webhook as received and answers; this stage takes the kept webhooks
in arrival order, maps each (:mod:`bridge.mapping.intake`, pure) and records the messages or
the dead letter, marking the webhook mapped in the same transaction (:class:`MappingStore`).

- :mod:`bridge.mapper.stage` - the loop (take, judge, record) and poison isolation;
- :mod:`bridge.mapper.child` - the stage as a process of its own under ``serve``;
- :mod:`bridge.mapper.supervisor` - ``serve``'s side: start it, wake it, restart it, drain it.

May import ``bridge.mapping``, ``bridge.store`` (the records and ports), ``bridge.config``,
``bridge.errors``, ``bridge.logs``, ``bridge.metrics``; nothing imports it but ``bridge.app``,
``bridge.serve`` and the CLI.
"""
