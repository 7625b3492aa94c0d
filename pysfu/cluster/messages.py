"""Node-to-node messages over Redis pub/sub, authenticated with the shared ``cluster_secret``.

Sans-IO: ``seal`` and ``Opener.open`` take the time (wall clock, seconds) and the nonce from
the caller. A sealed message is the JSON text ``{"m": PAYLOAD, "s": HMAC}``: PAYLOAD is the
message's own JSON text (so the MAC covers exactly the bytes that are parsed), HMAC its
HMAC-SHA256 under the secret, hex. Every payload names its sender (``from``) and its one
addressee (``to``), carries the sending time (``ts``) and a random ``nonce``. The opener
refuses what is too large, not sealed with the secret, addressed to another node, outside
``MAX_CLOCK_SKEW`` of now, or already seen (a replay of a captured message): ``MessageError``.

Anyone who can publish on the Redis server but does not know the secret can make a node do
nothing; a client of the SFU cannot reach this channel at all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import OrderedDict
from typing import Any

MAX_MESSAGE_BYTES = 64 * 1024  # a pipe offer with simulcast and RTX is ~2 KB
MAX_CLOCK_SKEW = 30.0  # seconds between the sender's and the receiver's clocks
MAX_REMEMBERED_NONCES = 100_000  # replay cache; older nonces are outside the skew anyway
NONCE_BYTES = 16


class MessageError(ValueError):
    """A message that is not for us, not authentic, stale, a replay or malformed."""


def _mac(secret: bytes, payload: str) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def seal(secret: bytes, message: dict[str, Any], *, sender: str, to: str, now: float,
         nonce: str) -> str:
    """The text to publish for ``message`` (a JSON object) from ``sender`` to ``to``."""
    body = dict(message)
    body.update({"from": sender, "to": to, "ts": now, "nonce": nonce})
    payload = json.dumps(body, separators=(",", ":"), sort_keys=True)
    return json.dumps({"m": payload, "s": _mac(secret, payload)}, separators=(",", ":"))


class Opener:
    """Checks and opens the messages addressed to ``node_id``; remembers the nonces seen."""

    def __init__(self, secret: bytes, node_id: str) -> None:
        self._secret = secret
        self._node_id = node_id
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> ts, oldest first
        self.rejected = 0  # messages refused (counted; logged by the caller)

    def open(self, text: str | bytes, now: float) -> dict[str, Any]:
        try:
            return self._open(text, now)
        except MessageError:
            self.rejected += 1
            raise

    def _open(self, text: str | bytes, now: float) -> dict[str, Any]:
        if len(text) > MAX_MESSAGE_BYTES:
            raise MessageError("message too large")
        try:
            outer = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError):  # (deep nesting)
            raise MessageError("not JSON") from None
        if not isinstance(outer, dict) or not isinstance(outer.get("m"), str) \
                or not isinstance(outer.get("s"), str):
            raise MessageError("not a sealed message")
        payload, mac = outer["m"], outer["s"]
        if not hmac.compare_digest(_mac(self._secret, payload), mac):
            raise MessageError("bad MAC (another cluster_secret?)")
        body = json.loads(payload)  # authentic: we (a node with the secret) wrote it
        if not isinstance(body, dict):
            raise MessageError("payload is not an object")
        if body.get("to") != self._node_id:
            raise MessageError("addressed to another node")
        ts, nonce = body.get("ts"), body.get("nonce")
        if isinstance(ts, bool) or not isinstance(ts, int | float) \
                or abs(now - ts) > MAX_CLOCK_SKEW:
            raise MessageError("stale or future message")
        if not isinstance(nonce, str) or not nonce or nonce in self._seen:
            raise MessageError("replayed message")
        self._remember(nonce, float(ts), now)
        if not isinstance(body.get("from"), str) or not isinstance(body.get("type"), str):
            raise MessageError("message without sender or type")
        return body

    def _remember(self, nonce: str, ts: float, now: float) -> None:
        self._seen[nonce] = ts
        while self._seen:
            oldest, when = next(iter(self._seen.items()))
            if len(self._seen) > MAX_REMEMBERED_NONCES or when < now - 2 * MAX_CLOCK_SKEW:
                del self._seen[oldest]
            else:
                break
