"""ICE-lite server (RFC 8445 §2.5), sans-IO: one per WebRTC transport.

The server is always *controlled*: it never sends checks, it answers Binding requests and
reports from them which remote 5-tuples are valid and which one the browser nominated.
Feed datagrams in with :meth:`IceLiteServer.handle_datagram`; send ``response`` back to the
address it came from and act on ``events``.

The list of tuples is not kept here but in the engine, which owns what matters for security
(media only to a nominated tuple that proved itself; ``bind_tuple`` in pysfu.media): it
keeps the validated tuples, evicts the least recently validated one beyond its bound, and
knows the selected (sending) tuple. Consent (RFC 7675) lives there too: the engine sees every
authenticated Binding request, answers the consent checks on the selected tuple itself (they
change no ICE state) and tells the transport when consent is lost (``consent_lost``). This
module keeps what ICE itself needs: credentials, the nomination (DTLS flights go to the
nominated tuple) and the last address it reported, so that a stream of checks from one
address is reported once.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from typing import Literal

from pysfu import stun

# A remote: (ip, port) over UDP, (ip, port, "tcp") over an ICE-TCP connection (RFC 6544)
# from that ip:port. A UDP flow and a TCP connection from one ip:port are different tuples.
Address = tuple[str, int] | tuple[str, int, str]


def make_address(ip: str, port: int, protocol: str = "udp") -> Address:
    return (ip, port) if protocol == "udp" else (ip, port, protocol)


def protocol_of(addr: Address) -> str:
    """"udp" or "tcp"."""
    return addr[2] if len(addr) == 3 else "udp"
IceState = Literal["new", "connected", "completed"]

# ice-char = ALPHA / DIGIT / "+" / "/" (RFC 8839); letters and digits only, to stay out of
# trouble with URL-ish handling of "/" and "+" anywhere downstream.
_ICE_CHARS = string.ascii_letters + string.digits
_CREDENTIAL_LENGTH = 32


@dataclass(frozen=True)
class TupleValidated:
    """An authenticated Binding request from ``addr`` (reported again when it comes after
    requests from another address: the engine keeps the tuples in that order)."""

    addr: Address


@dataclass(frozen=True)
class TupleSelected:
    """The browser nominated ``addr``: DTLS goes there; media once the engine has seen it
    prove itself."""

    addr: Address


IceEvent = TupleValidated | TupleSelected


@dataclass
class IceOutput:
    response: bytes | None = None
    events: list[IceEvent] = field(default_factory=list)


class IceLiteServer:
    def __init__(self, local_ufrag: str, local_password: str) -> None:
        self.local_ufrag = local_ufrag
        self.local_password = local_password
        self.state: IceState = "new"
        self.nominated: Address | None = None  # the browser's nomination
        self._reported: Address | None = None  # the address of the last TupleValidated
        self._last_nomination = 0
        # Counters, for stats and tests.
        self.requests_rejected = 0

    @staticmethod
    def generate_credentials() -> tuple[str, str]:
        def rnd() -> str:
            return "".join(secrets.choice(_ICE_CHARS) for _ in range(_CREDENTIAL_LENGTH))

        return rnd(), rnd()

    def restart(self) -> tuple[str, str]:
        """ICE restart: new local credentials; the old ones are refused from now on (the
        engine drops requests with them). The nomination stays (DTLS and media keep their
        tuple) until a request with the new credentials nominates another; the browser's
        nomination counter starts again with the new ICE session."""
        self.local_ufrag, self.local_password = self.generate_credentials()
        self._last_nomination = 0
        self._reported = None
        return self.local_ufrag, self.local_password

    # ---- input --------------------------------------------------------------------------------

    def handle_datagram(self, data: bytes, addr: Address) -> IceOutput:
        try:
            msg = stun.parse(data)
        except stun.StunError:
            return IceOutput(self._bad_request_for_garbage(data))
        if not msg.is_request:
            return IceOutput()  # responses/indications: ICE-lite never sends requests
        if msg.fingerprint_offset is not None and not stun.verify_fingerprint(msg):
            return IceOutput()  # corrupted or not really STUN: drop silently (RFC 5389 §7.3)
        txid = msg.transaction_id
        if (
            msg.method != stun.METHOD_BINDING
            or msg.fingerprint_offset is None
            or msg.integrity_offset is None
            or msg.username is None
            or msg.priority is None
        ):
            return self._reject(txid, 400)
        password = self._password_for(msg.username)
        if password is None or not stun.verify_integrity(msg, password.encode()):
            return self._reject(txid, 401)
        if msg.has(stun.ATTR_ICE_CONTROLLED):
            # Both sides think they are controlled; we are lite, so the peer must switch.
            return self._reject(txid, 487, password)
        return self._accept(msg, password, addr)

    def _bad_request_for_garbage(self, data: bytes) -> bytes | None:
        # Answer 400 only to something that is recognisably a Binding request; anything
        # else on the STUN port is noise and gets no reply (no amplification).
        if len(data) < stun.HEADER_SIZE or not stun.is_stun(data):
            return None
        if (data[0] << 8 | data[1]) != 0x0001:
            return None
        self.requests_rejected += 1
        return stun.error_response(data[8:20], 400)

    def _reject(self, txid: bytes, code: int, password: str | None = None) -> IceOutput:
        self.requests_rejected += 1
        return IceOutput(stun.error_response(txid, code, password=password))

    def _password_for(self, username: str) -> str | None:
        local, sep, _remote = username.partition(":")
        if not sep:
            return None
        if secrets.compare_digest(local.encode(), self.local_ufrag.encode()):
            return self.local_password
        return None

    def _accept(
        self, msg: stun.StunMessage, password: str, addr: Address
    ) -> IceOutput:
        try:
            response = stun.binding_success(msg.transaction_id, (addr[0], addr[1]), password)
        except ValueError:
            return IceOutput()  # not an IP address we can map back: nothing sensible to say
        out = IceOutput(response)

        if addr != self._reported:
            self._reported = addr
            out.events.append(TupleValidated(addr))

        nominated = msg.use_candidate
        nomination = msg.nomination
        if nomination is not None and nomination > self._last_nomination:
            self._last_nomination = nomination
            nominated = True
        if nominated and addr != self.nominated:
            self.nominated = addr
            out.events.append(TupleSelected(addr))
        self.state = "completed" if self.nominated is not None else "connected"
        return out
