"""Stage 4: claim due messages, cut them into batches, upload to Segment, record every outcome.

``loop`` runs the claim/upload cycle, ``batching`` and ``wire`` are pure (what goes in one
request, and its bytes), ``sinks`` is the one module that speaks HTTP to Segment, ``outcomes``
applies what an upload's answer means to the store, ``retry`` is the backoff policy and
``threads`` runs blocking uploads off the event loop.
May import: ``bridge.config``, ``bridge.errors``, ``bridge.logs``, ``bridge.metrics``,
``bridge.messages`` and the ``bridge.store`` contract; never a store backend or the receiver.
"""
