"""What Synap sends: the event codes it knows, lenient payload models, inbound value coercion.

Pure and dependency-light. May import only ``bridge.messages`` (time formatting) and pydantic;
everything else in the bridge may import this package.
"""
