"""Benchmarks of the bridge, each beside a baseline measured in the same run (``make bench``).

Everything runs on loopback in separate processes (the bridge, the fake Segment, the load
generator), so no two measured parts share an interpreter. ``python -m bench.run`` writes
``docs/benchmarks.md``; its working files (databases, profiles, raw results) go to ``bench/out/``.
"""
