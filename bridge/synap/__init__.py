"""What Synap sends: the event codes it knows, lenient payload models, inbound value coercion.

Pure and dependency-light. May import only ``bridge.messages`` (time formatting); the payload
models are plain classes over ``lenient`` (pydantic's per-field cost was intake CPU, issue 16);
everything else in the bridge may import this package. Two exceptions, both for the CLI:
``samples`` (the sample bodies shipped as package data, also the tests' fixtures) and ``api``
(the HTTP client for Synap's subscription API, which ``synap sync`` alone imports).
"""
