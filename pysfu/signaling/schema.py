"""Parsing and validation of signaling messages (JSON text frames, one object each)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pysfu import errors
from pysfu.errors import SignalingError

# Room and peer ids come from clients: keep them to a safe, log-friendly alphabet, matched
# whole (``fullmatch``: ``$`` would let a trailing newline through).
_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# JSON nesting deeper than this is refused before ``json.loads`` sees it (no message of the
# protocol nests deeper than ~8; the C parser itself would recurse ~thousands deep).
MAX_JSON_DEPTH = 32
# Where a frame's request id is looked for without parsing it (rate-limited frames are
# answered with their id but never parsed): ``"id":`` among the first bytes of the frame.
_ID_PREFIX = 256
_ID_RE = re.compile(r'"id"\s*:\s*(-?\d{1,18}|"[^"\\]{0,64}")')
_STRINGS_RE = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS_RE = re.compile(r"[^\[\]{}]+")
FINGERPRINT_ALGORITHMS = frozenset({"sha-1", "sha-224", "sha-256", "sha-384", "sha-512"})
_HEX_PAIRS_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){19,63}$")


@dataclass(frozen=True)
class Request:
    id: int | str | None
    event: str
    data: dict[str, Any]


def peek_request_id(text: str | bytes) -> int | str | None:
    """The request id of a frame without parsing it (None when not found up front)."""
    head = text[:_ID_PREFIX]
    if isinstance(head, bytes):
        head = head.decode("utf-8", "replace")
    m = _ID_RE.search(head)
    if m is None:
        return None
    raw = m.group(1)
    return raw[1:-1] if raw.startswith('"') else int(raw)


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether brackets outside strings nest deeper than ``limit`` (C-speed regexes first;
    the Python loop only runs over a frame with many brackets)."""
    brackets = _NOT_BRACKETS_RE.sub("", _STRINGS_RE.sub("", text))
    if len(brackets) <= 2 * limit:
        return False
    depth = 0
    for c in brackets:
        depth += 1 if c in "[{" else -1
        if depth > limit:
            return True
    return False


def parse_request(text: str | bytes) -> Request:
    """Parse one frame; raises SignalingError(bad_request) with the request id when known."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if json_depth_exceeds(text):
            raise RequestError(peek_request_id(text), errors.BAD_REQUEST,
                               f"JSON nested deeper than {MAX_JSON_DEPTH}")
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SignalingError(errors.BAD_REQUEST, "message is not valid JSON") from None
    if not isinstance(msg, dict):
        raise SignalingError(errors.BAD_REQUEST, "message must be a JSON object")
    req_id = msg.get("id")
    if req_id is not None and (
        isinstance(req_id, bool) or not isinstance(req_id, int | str) or len(str(req_id)) > 64
    ):
        raise SignalingError(errors.BAD_REQUEST, "id must be an integer or a short string")
    event = msg.get("event")
    if not isinstance(event, str) or not event:
        raise RequestError(req_id, errors.BAD_REQUEST, "event must be a non-empty string")
    data = msg.get("data", {})
    if not isinstance(data, dict):
        raise RequestError(req_id, errors.INVALID_FIELD, "data must be an object")
    return Request(req_id, event, data)


class RequestError(SignalingError):
    """A SignalingError that already knows which request id it answers."""

    def __init__(self, request_id: int | str | None, code: str, message: str) -> None:
        super().__init__(code, message)
        self.request_id = request_id


def _invalid(name: str, why: str) -> SignalingError:
    return SignalingError(errors.INVALID_FIELD, f"{name}: {why}")


def get_str(data: dict[str, Any], name: str, *, choices: frozenset[str] | None = None) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise _invalid(name, "required non-empty string")
    if len(value) > 256:
        raise _invalid(name, "too long")
    if choices is not None and value not in choices:
        raise _invalid(name, f"must be one of {', '.join(sorted(choices))}")
    return value


def get_name(data: dict[str, Any], name: str) -> str:
    """A client-chosen id (roomId, peerId): 1-64 chars of [A-Za-z0-9_.:-]."""
    value = data.get(name)
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise _invalid(name, "required, 1-64 characters of letters, digits, _ . : -")
    return value


MAX_DISPLAY_NAME = 128  # characters of a displayName (a token's name claim: the same)


def get_display_name(data: dict[str, Any], name: str = "displayName") -> str | None:
    """An optional display name (join in open rooms): 1-128 characters, no control
    characters; None when absent."""
    value = data.get(name)
    if value is None:
        return None
    if (not isinstance(value, str) or not value.strip() or len(value) > MAX_DISPLAY_NAME
            or any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in value)):
        raise _invalid(name, f"1-{MAX_DISPLAY_NAME} characters, no control characters")
    return value


def get_object(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    if not isinstance(value, dict):
        raise _invalid(name, "required object")
    return value


def get_layer(data: dict[str, Any], name: str) -> int:
    """A simulcast/SVC layer index (spatialLayer, temporalLayer): integer 0..255."""
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise _invalid(name, "required integer 0..255")
    return value
STATS_TARGETS = ("transportId", "producerId", "consumerId")


def get_stats_target(data: dict[str, Any]) -> tuple[str, str]:
    """getStats names exactly one object: (which of STATS_TARGETS, its id)."""
    given = [name for name in STATS_TARGETS if name in data]
    if len(given) != 1:
        raise _invalid("getStats", "give exactly one of transportId, producerId, consumerId")
    return given[0], get_str(data, given[0])


def get_dtls_parameters(data: dict[str, Any]) -> dict[str, Any]:
    """Validate mediasoup DtlsParameters: {role?, fingerprints: [{algorithm, value}, ...]}."""
    params = get_object(data, "dtlsParameters")
    role = params.get("role", "auto")
    if role not in ("auto", "client", "server"):
        raise SignalingError(errors.INVALID_DTLS_PARAMETERS, "role must be auto, client or server")
    fps = params.get("fingerprints")
    if not isinstance(fps, list) or not fps or len(fps) > 8:
        raise SignalingError(errors.INVALID_DTLS_PARAMETERS, "fingerprints: non-empty list")
    clean = []
    for fp in fps:
        if not isinstance(fp, dict):
            raise SignalingError(errors.INVALID_DTLS_PARAMETERS, "fingerprint must be an object")
        alg, value = fp.get("algorithm"), fp.get("value")
        if alg not in FINGERPRINT_ALGORITHMS:
            raise SignalingError(errors.INVALID_DTLS_PARAMETERS, f"unknown algorithm {alg!r}")
        if not isinstance(value, str) or not _HEX_PAIRS_RE.match(value):
            raise SignalingError(errors.INVALID_DTLS_PARAMETERS, "fingerprint: hex pairs")
        clean.append({"algorithm": alg, "value": value.upper()})
    return {"role": role, "fingerprints": clean}


def encode(event: str, data: dict[str, Any], request_id: int | str | None = None) -> str:
    msg: dict[str, Any] = {"event": event, "data": data}
    if request_id is not None:
        msg["id"] = request_id
    return json.dumps(msg, separators=(",", ":"))


def encode_error(request_id: int | str | None, code: str, message: str, event: str | None) -> str:
    data: dict[str, Any] = {"code": code, "message": message}
    if event is not None:
        data["request"] = event
    return json.dumps({"id": request_id, "event": "error", "data": data}, separators=(",", ":"))
