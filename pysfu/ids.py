"""Random, unguessable identifiers (never derived from socket ids or counters)."""

import uuid


def new_id() -> str:
    """A UUID v4 string, as mediasoup uses: 122 random bits."""
    return str(uuid.uuid4())
