"""Stage 4: claim due messages, cut them into batches, upload to Segment, record every outcome.

``loop`` decides when to claim and send (adaptive batching, pauses, idling, stop), woken by the
``arrivals`` latch; ``uploads`` sends one batch (upload slot, total deadline, split, hand back);
``batching`` and ``wire`` are pure (what goes in one request, and its bytes); ``sinks`` is the
one module that speaks HTTP to Segment (aiohttp's client, on the event loop: no threads);
``outcomes`` applies what an upload's answer means to the store (an ack retried while the lease
lasts); ``retry`` is the backoff policy; ``clocks`` keeps waits monotonic and the store's clock
from stepping back; ``dryrun`` shows what waits for a destination without a write key.
May import: ``bridge.config``, ``bridge.errors``, ``bridge.logs``, ``bridge.metrics``,
``bridge.messages`` and the ``bridge.store`` contract; never a store backend or the receiver.
"""
