"""The signaling protocol's errors: ``SignalingError`` and every stable ``code`` an ``error``
answer carries. Lower layers raise their own errors; pysfu.signaling maps them to these."""

from __future__ import annotations


class SignalingError(Exception):
    """A request failed; ``code`` is part of the protocol, ``message`` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# The stable codes, in one place so tests and clients can refer to them.
BAD_REQUEST = "bad_request"            # not JSON, not an object, no event
UNKNOWN_EVENT = "unknown_event"
INVALID_FIELD = "invalid_field"        # missing or mistyped field
NOT_JOINED = "not_joined"
ALREADY_JOINED = "already_joined"
UNAUTHORIZED = "unauthorized"          # join token missing, malformed, bad or expired
FORBIDDEN = "forbidden"                # not the owner / not allowed for this role or room
LIMIT_EXCEEDED = "limit_exceeded"
RATE_LIMITED = "rate_limited"
TRANSPORT_NOT_FOUND = "transport_not_found"
PRODUCER_NOT_FOUND = "producer_not_found"
CONSUMER_NOT_FOUND = "consumer_not_found"
ALREADY_CONNECTED = "already_connected"
INVALID_DTLS_PARAMETERS = "invalid_dtls_parameters"
CANNOT_CONSUME = "cannot_consume"
ALREADY_CONSUMING = "already_consuming"  # one consumer per producer per transport
INTERNAL_ERROR = "internal_error"
UNAVAILABLE = "unavailable"            # the server is draining: no new rooms here
ROOM_NOT_FOUND = "room_not_found"      # admin API
PEER_NOT_FOUND = "peer_not_found"      # admin API

__all__ = [
    "ALREADY_CONNECTED", "ALREADY_CONSUMING", "ALREADY_JOINED", "BAD_REQUEST", "CANNOT_CONSUME",
    "CONSUMER_NOT_FOUND", "FORBIDDEN", "INTERNAL_ERROR", "INVALID_DTLS_PARAMETERS",
    "INVALID_FIELD", "LIMIT_EXCEEDED", "NOT_JOINED", "PEER_NOT_FOUND", "PRODUCER_NOT_FOUND",
    "RATE_LIMITED", "ROOM_NOT_FOUND",
    "TRANSPORT_NOT_FOUND", "UNAUTHORIZED", "UNAVAILABLE", "UNKNOWN_EVENT", "SignalingError",
]
