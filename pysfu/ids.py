"""Random, unguessable identifiers (never derived from socket ids or counters)."""

import secrets
import uuid

RESUME_SECRET_BYTES = 32  # a host's resume secret: 256 random bits


def new_id() -> str:
    """A UUID v4 string, as mediasoup uses: 122 random bits."""
    return str(uuid.uuid4())


def new_secret() -> str:
    """A bearer secret (a host's resume secret): 256 random bits, URL-safe text."""
    return secrets.token_urlsafe(RESUME_SECRET_BYTES)
