"""synap-segment-bridge: Synap webhooks in, Segment identify/track/group calls out."""

__version__ = "0.1.0"
NAME = "synap-segment-bridge"
