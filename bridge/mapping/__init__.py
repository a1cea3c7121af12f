"""Stage 2, pure: a Synap webhook's bytes become Segment messages (or a dead-letter reason).

No I/O and no clock reads: time is passed in. ``intake`` turns raw bytes into what the store
commits (and remaps stored bodies for replay); ``webhook.map_webhook`` is the one entry point per
code; ``attempts``, ``users`` and ``activity`` hold the per-family mappers over the shared
``draft`` helpers; ``traits``, ``routing`` and ``sizing`` do one job each.
May import: ``bridge.synap``, ``bridge.messages``, ``bridge.config``, ``bridge.errors`` and the
``bridge.store`` records; never the receiver, a store backend or delivery.
"""
