"""Join tokens: HS256 JWTs (PyJWT) that name a peer's identity, room and role.

Sans-IO: the time is passed in. An app server mints a token with :func:`create_token` (or
any JWT library: claims ``sub``, ``room``, ``role``, ``exp``, optional ``nbf`` and ``name``,
header ``kid`` when the server has several keys); the server checks it with
:class:`Verifier` and uses ``sub`` as the peer id.

Failures are :class:`AuthError` with a protocol code: ``unauthorized`` for a token that is
missing, malformed, badly signed, unknown-keyed, expired or not yet valid (one message for
all of them: nothing about why a signature failed leaks), ``forbidden`` for a valid token
that does not grant what was asked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from pysfu import errors

ALGORITHM = "HS256"
ROLES = ("host", "viewer")
ANY_ROOM = "*"
MIN_SECRET_BYTES = 32  # HS256 keys shorter than the hash are guessable (RFC 7518 §3.2)
MAX_TOKEN_LENGTH = 4096
MAX_NAME_LENGTH = 128
# Tolerated clock difference between the app server that minted a token and this one.
LEEWAY_SECONDS = 30.0
_IDENTITY_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # as signaling's room and peer ids
_REQUIRED = ("sub", "room", "role", "exp")


class AuthError(Exception):
    """A join refused: ``code`` is ``unauthorized`` or ``forbidden``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _unauthorized() -> AuthError:
    return AuthError(errors.UNAUTHORIZED, "invalid or expired token")


@dataclass(frozen=True)
class Grant:
    """What a valid token allows."""

    identity: str  # the peer id
    room: str  # a room id, or ANY_ROOM
    role: str  # host | viewer
    expires: float  # UNIX time
    name: str | None = None  # display name

    def check(self, room_id: str, role: str) -> None:
        """Raise forbidden unless this grant allows joining ``room_id`` as ``role``."""
        if self.room not in (ANY_ROOM, room_id):
            raise AuthError(errors.FORBIDDEN, "the token is for another room")
        if self.role != role:
            raise AuthError(errors.FORBIDDEN, f"the token does not allow the role {role}")


class Verifier:
    """Checks tokens against one secret (``auth_secret``) or several by key id
    (``auth_keys``: the token's ``kid`` header picks one, for rotation)."""

    def __init__(self, secret: str | None = None,
                 keys: Mapping[str, str] | None = None) -> None:
        self._secret = secret.encode() if secret else None
        self._keys = {kid: s.encode() for kid, s in (keys or {}).items()}
        if self._secret is None and not self._keys:
            raise ValueError("a Verifier needs auth_secret or auth_keys")

    def _key(self, token: str) -> bytes:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _unauthorized() from None
        kid = header.get("kid")
        if kid is None:
            if self._secret is None:
                raise _unauthorized()
            return self._secret
        if not isinstance(kid, str) or kid not in self._keys:
            raise _unauthorized()
        return self._keys[kid]

    def verify(self, token: Any, *, now: float) -> Grant:
        """The grant of a valid token at UNIX time ``now``; AuthError otherwise."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise _unauthorized()
        key = self._key(token)
        try:
            # exp/nbf are checked below against the ``now`` given, not the library's clock.
            claims = jwt.decode(token, key, algorithms=[ALGORITHM],
                                options={"verify_exp": False, "verify_nbf": False,
                                         "verify_iat": False, "require": list(_REQUIRED)})
        except jwt.PyJWTError:
            raise _unauthorized() from None
        exp, nbf = claims["exp"], claims.get("nbf")
        for value in (exp, nbf):
            # PyJWT parses with json.loads, which takes NaN and Infinity: a token that never
            # expires (or compares false to everything) is refused like a malformed one.
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, int | float)
                                      or not math.isfinite(value)):
                raise _unauthorized()
        if now > exp + LEEWAY_SECONDS or (nbf is not None and now < nbf - LEEWAY_SECONDS):
            raise _unauthorized()
        sub, room, role, name = (claims["sub"], claims["room"], claims["role"],
                                 claims.get("name"))
        if not (isinstance(sub, str) and _IDENTITY_RE.fullmatch(sub)):
            raise _unauthorized()
        if not (isinstance(room, str) and (room == ANY_ROOM or _IDENTITY_RE.fullmatch(room))):
            raise _unauthorized()
        if role not in ROLES:
            raise _unauthorized()
        if name is not None and not (isinstance(name, str) and len(name) <= MAX_NAME_LENGTH):
            raise _unauthorized()
        return Grant(sub, room, role, float(exp), name)


def create_token(secret: str, *, room: str, identity: str, role: str, now: float,
                 ttl: float = 3600.0, name: str | None = None, kid: str | None = None,
                 not_before: float | None = None) -> str:
    """Mint a join token (for app servers, the ``pysfu token`` command and tests)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not _IDENTITY_RE.fullmatch(identity):
        raise ValueError("identity: 1-64 characters of letters, digits, _ . : -")
    if room != ANY_ROOM and not _IDENTITY_RE.fullmatch(room):
        raise ValueError("room: '*' or 1-64 characters of letters, digits, _ . : -")
    if not 0 < ttl < math.inf:
        raise ValueError("ttl must be > 0 and finite")
    if name is not None and not (isinstance(name, str) and len(name) <= MAX_NAME_LENGTH):
        raise ValueError(f"name: at most {MAX_NAME_LENGTH} characters")
    claims: dict[str, Any] = {"sub": identity, "room": room, "role": role,
                              "exp": int(now + ttl), "iat": int(now)}
    if not_before is not None:
        claims["nbf"] = int(not_before)
    if name is not None:
        claims["name"] = name
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, secret.encode(), algorithm=ALGORITHM, headers=headers)


__all__ = ["ANY_ROOM", "AuthError", "Grant", "Verifier", "create_token"]
