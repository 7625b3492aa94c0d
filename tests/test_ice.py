"""ICE-lite server: authentication, role conflict, nomination, restart (consent is the
engine's: native/src/router/tests/consent.rs)."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from pysfu import stun
from pysfu.ice import IceLiteServer, TupleSelected, TupleValidated

UFRAG, PWD = "serverufragserverufragserverufr1", "serverpasswordserverpassword1234"
BROWSER = ("192.0.2.10", 50000)
OTHER = ("198.51.100.20", 50001)


def request(
    *,
    ufrag: str = UFRAG,
    pwd: str = PWD,
    use_candidate: bool = False,
    nomination: int | None = None,
    controlled: bool = False,
    txid: bytes | None = None,
) -> bytes:
    return stun.binding_request(
        f"{ufrag}:brws", pwd, priority=1853824767, transaction_id=txid,
        ice_controlling=None if controlled else 0x0102030405060708,
        ice_controlled=0x0102030405060708 if controlled else None,
        use_candidate=use_candidate, nomination=nomination,
    )


def server() -> IceLiteServer:
    return IceLiteServer(UFRAG, PWD)


def test_generate_credentials() -> None:
    ufrag, pwd = IceLiteServer.generate_credentials()
    assert len(ufrag) == len(pwd) == 32
    legal = set(string.ascii_letters + string.digits + "+/")
    assert set(ufrag) <= legal and set(pwd) <= legal
    assert IceLiteServer.generate_credentials() != (ufrag, pwd)


def test_valid_request_gets_success_with_mapped_address() -> None:
    ice = server()
    txid = stun.new_transaction_id()
    out = ice.handle_datagram(request(txid=txid), BROWSER)
    assert out.response is not None
    resp = stun.parse(out.response)
    assert (resp.method, resp.cls) == (stun.METHOD_BINDING, stun.CLASS_SUCCESS)
    assert resp.transaction_id == txid
    assert resp.xor_mapped_address == BROWSER
    assert stun.verify_integrity(resp, PWD.encode())
    assert stun.verify_fingerprint(resp)
    assert out.events == [TupleValidated(BROWSER)]
    assert ice.state == "connected"
    assert ice.nominated is None
    # The same tuple again: no new event.
    assert ice.handle_datagram(request(), BROWSER).events == []


def test_ipv6_tuple() -> None:
    ice = server()
    addr = ("2001:db8::7", 61000)
    out = ice.handle_datagram(request(use_candidate=True), addr)
    assert out.response is not None
    assert stun.parse(out.response).xor_mapped_address == addr
    assert ice.nominated == addr


def _error(out_response: bytes | None) -> int:
    assert out_response is not None
    resp = stun.parse(out_response)
    assert resp.cls == stun.CLASS_ERROR
    assert stun.verify_fingerprint(resp)
    code = resp.error_code
    assert code is not None
    return code[0]


def test_bad_password_401_and_no_event() -> None:
    ice = server()
    out = ice.handle_datagram(request(pwd="wrong-password-wrong-password-xx"), BROWSER)
    assert _error(out.response) == 401
    assert out.events == []
    assert ice.state == "new"


def test_wrong_ufrag_401() -> None:
    ice = server()
    out = ice.handle_datagram(request(ufrag="someoneelse"), BROWSER)
    assert _error(out.response) == 401
    assert out.events == []


def test_username_without_colon_401() -> None:
    ice = server()
    data = stun.StunMessage(stun.METHOD_BINDING, stun.CLASS_REQUEST, bytes(12))
    data.add(stun.ATTR_USERNAME, UFRAG.encode()).add(stun.ATTR_PRIORITY, b"\0\0\0\1")
    out = ice.handle_datagram(data.encode(PWD.encode(), fingerprint=True), BROWSER)
    assert _error(out.response) == 401


def test_ice_controlled_487() -> None:
    ice = server()
    out = ice.handle_datagram(request(controlled=True, use_candidate=True), BROWSER)
    assert _error(out.response) == 487
    assert stun.verify_integrity(stun.parse(out.response or b""), PWD.encode())
    assert out.events == []
    assert ice.nominated is None


def _request_without(attr: int) -> bytes:
    msg = stun.parse(request())
    msg.attributes = [(t, v) for t, v in msg.attributes if t != attr]
    return msg.encode(PWD.encode(), fingerprint=attr != stun.ATTR_FINGERPRINT)


def test_missing_attributes_400() -> None:
    ice = server()
    for attr in (stun.ATTR_PRIORITY, stun.ATTR_USERNAME, stun.ATTR_FINGERPRINT):
        assert _error_code_400(ice.handle_datagram(_request_without(attr), BROWSER).response)
    no_integrity = stun.parse(request())
    data = no_integrity.encode(None, fingerprint=True)
    assert _error_code_400(ice.handle_datagram(data, BROWSER).response)
    assert ice.state == "new"


def _error_code_400(resp: bytes | None) -> bool:
    return _error(resp) == 400


def test_malformed_binding_request_400_and_garbage_ignored() -> None:
    ice = server()
    good = request()
    broken = good[:20] + b"\x00\x06\x00\x40" + good[24:]  # USERNAME length overruns
    assert _error(ice.handle_datagram(broken, BROWSER).response) == 400
    assert ice.handle_datagram(b"\x17\xfe\xfd" + bytes(40), BROWSER).response is None
    assert ice.handle_datagram(b"", BROWSER).response is None
    # A broken *response* or indication is not answered (no reflection).
    resp = bytearray(stun.binding_success(bytes(12), BROWSER, PWD))
    resp[3] ^= 4
    assert ice.handle_datagram(bytes(resp), BROWSER).response is None


def test_non_binding_method_400() -> None:
    ice = server()
    msg = stun.StunMessage(0x003, stun.CLASS_REQUEST, bytes(12))
    out = ice.handle_datagram(msg.encode(PWD.encode(), fingerprint=True), BROWSER)
    assert _error(out.response) == 400


def test_bad_fingerprint_dropped_silently() -> None:
    ice = server()
    data = bytearray(request())
    data[-1] ^= 0xFF
    out = ice.handle_datagram(bytes(data), BROWSER)
    assert out.response is None and out.events == []


def test_responses_and_indications_ignored() -> None:
    ice = server()
    success = stun.binding_success(bytes(12), BROWSER, PWD)
    indication = stun.StunMessage(1, stun.CLASS_INDICATION, bytes(12)).encode(fingerprint=True)
    for data in (success, indication, stun.error_response(bytes(12), 400)):
        out = ice.handle_datagram(data, BROWSER)
        assert out.response is None and out.events == []
    assert ice.state == "new"


def test_use_candidate_selects() -> None:
    ice = server()
    out = ice.handle_datagram(request(use_candidate=True), BROWSER)
    assert out.events == [TupleValidated(BROWSER), TupleSelected(BROWSER)]
    assert ice.nominated == BROWSER
    assert ice.state == "completed"
    # Chrome repeats USE-CANDIDATE on every check: no repeated event.
    assert ice.handle_datagram(request(use_candidate=True), BROWSER).events == []


def test_use_candidate_from_new_address_switches() -> None:
    ice = server()
    ice.handle_datagram(request(use_candidate=True), BROWSER)
    out = ice.handle_datagram(request(use_candidate=True), OTHER)
    assert out.events == [TupleValidated(OTHER), TupleSelected(OTHER)]
    assert ice.nominated == OTHER


def test_nomination_switch() -> None:
    ice = server()
    assert ice.handle_datagram(request(nomination=1), BROWSER).events == [
        TupleValidated(BROWSER), TupleSelected(BROWSER)]
    assert ice.handle_datagram(request(), OTHER).events == [TupleValidated(OTHER)]
    assert ice.nominated == BROWSER
    # Not higher than the last nomination: no switch.
    assert ice.handle_datagram(request(nomination=1), OTHER).events == []
    assert ice.nominated == BROWSER
    out = ice.handle_datagram(request(nomination=2), OTHER)
    assert out.events == [TupleSelected(OTHER)]
    assert ice.nominated == OTHER
    # And back again with a higher one (BROWSER validated again after OTHER: reported, so
    # the engine's tuple list has it as the most recent).
    assert ice.handle_datagram(request(nomination=3), BROWSER).events == [
        TupleValidated(BROWSER), TupleSelected(BROWSER)]


def test_spoofed_request_never_moves_selected_tuple() -> None:
    ice = server()
    ice.handle_datagram(request(use_candidate=True), BROWSER)
    attacker = ("203.0.113.66", 4444)
    for data in (
        request(use_candidate=True, pwd="guessed-password-guessed-passwor"),
        request(nomination=99, pwd="guessed-password-guessed-passwor"),
        request(use_candidate=True, ufrag="x"),
        request(use_candidate=True, controlled=True, pwd="guessed-password-guessed-passwor"),
    ):
        out = ice.handle_datagram(data, attacker)
        assert out.events == []
        assert out.response is not None and stun.parse(out.response).cls == stun.CLASS_ERROR
    # A replay of the victim's request with USE-CANDIDATE appended after MESSAGE-INTEGRITY.
    signed = request()
    tampered = signed[:-8] + b"\x00\x25\x00\x00"
    tampered = tampered[:2] + (len(tampered) - 20).to_bytes(2, "big") + tampered[4:]
    assert ice.handle_datagram(tampered, attacker).events == []
    assert ice.nominated == BROWSER


def test_validations_reported_in_order_nomination_kept() -> None:
    # The tuple list (its order, its bound, the sending tuple) lives in the engine: ICE
    # reports each validation that follows one from another address, and only those.
    ice = server()
    ice.handle_datagram(request(use_candidate=True), BROWSER)
    events = [e for i in range(20)
              for e in ice.handle_datagram(request(), ("10.0.0.1", 1000 + i)).events]
    assert events == [TupleValidated(("10.0.0.1", 1000 + i)) for i in range(20)]
    assert ice.nominated == BROWSER
    # Consent checks on one tuple: reported once.
    assert ice.handle_datagram(request(), BROWSER).events == [TupleValidated(BROWSER)]
    assert ice.handle_datagram(request(), BROWSER).events == []


def test_restart_refuses_old_credentials_and_keeps_the_nomination() -> None:
    ice = server()
    ice.handle_datagram(request(use_candidate=True), BROWSER)
    new_ufrag, new_pwd = ice.restart()
    assert (new_ufrag, new_pwd) == (ice.local_ufrag, ice.local_password)
    assert new_ufrag != UFRAG and new_pwd != PWD
    # The nomination stays (DTLS and media keep their tuple) until the new ICE session
    # nominates; the old credentials are refused at once (as the engine does).
    assert ice.nominated == BROWSER
    assert _error(ice.handle_datagram(request(), BROWSER).response) == 401
    # Mixing the new ufrag with the old password fails.
    assert _error(ice.handle_datagram(request(ufrag=new_ufrag), BROWSER).response) == 401
    out = ice.handle_datagram(request(ufrag=new_ufrag, pwd=new_pwd), BROWSER)
    assert stun.parse(out.response or b"").cls == stun.CLASS_SUCCESS
    assert stun.verify_integrity(stun.parse(out.response or b""), new_pwd.encode())


def test_chrome_style_request_with_unknown_attribute() -> None:
    # libwebrtc adds GOOG-NETWORK-INFO (0xC057), comprehension-optional: must be ignored.
    msg = stun.StunMessage(stun.METHOD_BINDING, stun.CLASS_REQUEST, bytes(12))
    msg.add(stun.ATTR_USERNAME, f"{UFRAG}:chrm".encode()).add(0xC057, b"\x00\x01\x00\x0a")
    msg.add(stun.ATTR_ICE_CONTROLLING, bytes(8)).add(stun.ATTR_USE_CANDIDATE)
    msg.add(stun.ATTR_PRIORITY, (1853824767).to_bytes(4, "big"))
    data = msg.encode(PWD.encode(), fingerprint=True)
    out = server().handle_datagram(data, BROWSER)
    assert out.events == [TupleValidated(BROWSER), TupleSelected(BROWSER)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_handle_datagram_never_raises(data: bytes) -> None:
    ice = server()
    out = ice.handle_datagram(b"\x00\x01" + data[2:] if len(data) > 2 else data, BROWSER)
    assert out.events == []


def test_unmappable_source_address_is_not_validated() -> None:
    ice = server()
    out = ice.handle_datagram(request(use_candidate=True), ("not-an-ip", 1))
    assert out.response is None and out.events == []
    assert ice.state == "new"
