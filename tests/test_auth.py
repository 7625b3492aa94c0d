"""pysfu.auth: join tokens (sans-IO, time passed in)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest

from pysfu import errors
from pysfu.auth import AuthError, Grant, Verifier, create_token

SECRET = "s" * 32
OTHER = "o" * 32
NOW = 1_800_000_000.0


def token(**kw: object) -> str:
    args = {"room": "r1", "identity": "alice", "role": "host", "now": NOW}
    args.update(kw)
    secret = args.pop("secret", SECRET)
    return create_token(secret, **args)  # type: ignore[arg-type]


def code(verifier: Verifier, tok: object, now: float = NOW) -> str:
    with pytest.raises(AuthError) as err:
        verifier.verify(tok, now=now)
    return err.value.code


def test_a_valid_token_grants_its_identity_room_and_role() -> None:
    grant = Verifier(SECRET).verify(token(name="Alice A."), now=NOW + 10)
    assert grant == Grant("alice", "r1", "host", NOW + 3600, "Alice A.")
    grant.check("r1", "host")
    for room, role in (("r2", "host"), ("r1", "viewer")):
        with pytest.raises(AuthError) as err:
            grant.check(room, role)
        assert err.value.code == errors.FORBIDDEN
    Verifier(SECRET).verify(token(room="*"), now=NOW).check("any-room", "host")


def test_every_bad_token_is_unauthorized_with_one_message() -> None:
    v = Verifier(SECRET)
    good = token()
    header, payload, sig = good.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["role"] = "host"
    forged["room"] = "*"
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    none_alg = jwt.encode({"sub": "alice", "room": "r1", "role": "host", "exp": NOW + 60},
                          None, algorithm="none")
    cases = {
        "missing": None, "empty": "", "garbage": "not.a.token", "not a string": 42,
        "wrong signature": token(secret=OTHER), "tampered": f"{header}.{forged_payload}.{sig}",
        "alg none": none_alg, "too long": good + "A" * 5000,
        "expired": token(ttl=60), "no exp": jwt.encode(
            {"sub": "alice", "room": "r1", "role": "host"}, SECRET, algorithm="HS256"),
        "nbf in the future": token(not_before=NOW + 3600),
        "bad role": jwt.encode({"sub": "a", "room": "r1", "role": "admin", "exp": NOW + 60},
                               SECRET, algorithm="HS256"),
        "bad sub": jwt.encode({"sub": "a b\n", "room": "r1", "role": "host", "exp": NOW + 60},
                              SECRET, algorithm="HS256"),
    }
    messages = set()
    for why, tok in cases.items():
        now = NOW + 3600 if why == "expired" else NOW
        with pytest.raises(AuthError) as err:
            v.verify(tok, now=now)
        assert err.value.code == errors.UNAUTHORIZED, why
        messages.add(err.value.message)
    assert messages == {"invalid or expired token"}


def test_clock_leeway() -> None:
    v = Verifier(SECRET)
    v.verify(token(ttl=60), now=NOW + 60 + 29)
    assert code(v, token(ttl=60), NOW + 60 + 31) == errors.UNAUTHORIZED
    v.verify(token(not_before=NOW + 20), now=NOW)


def test_key_rotation_by_kid() -> None:
    v = Verifier(keys={"old": SECRET, "new": OTHER})
    v.verify(token(kid="old"), now=NOW)
    v.verify(token(secret=OTHER, kid="new"), now=NOW)
    assert code(v, token(kid="new")) == errors.UNAUTHORIZED  # old secret, new kid
    assert code(v, token(kid="gone")) == errors.UNAUTHORIZED
    assert code(v, token()) == errors.UNAUTHORIZED  # no kid, and no default secret
    both = Verifier(SECRET, keys={"new": OTHER})
    both.verify(token(), now=NOW)
    both.verify(token(secret=OTHER, kid="new"), now=NOW)


def test_create_token_refuses_what_the_server_would() -> None:
    for kw in ({"role": "admin"}, {"identity": "a b"}, {"room": "r\n"}, {"ttl": 0}):
        with pytest.raises(ValueError):
            token(**kw)
    with pytest.raises(ValueError):
        Verifier()


def test_non_finite_times_are_refused() -> None:
    """json.loads (used by PyJWT) takes NaN and Infinity: such a token, even correctly
    signed, must not be a token that never expires."""
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    v = Verifier(SECRET)
    for exp in (b"NaN", b"Infinity"):
        payload = base64.urlsafe_b64encode(
            b'{"sub":"alice","room":"r1","role":"host","exp":' + exp + b"}").rstrip(b"=")
        signing_input = header + b"." + payload
        sig = base64.urlsafe_b64encode(
            hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()).rstrip(b"=")
        assert code(v, (signing_input + b"." + sig).decode()) == errors.UNAUTHORIZED
    with pytest.raises(ValueError):
        token(name="n" * 129)
    with pytest.raises(ValueError):
        token(ttl=float("inf"))
