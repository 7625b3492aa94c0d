"""Domain errors of the layers below signaling each map to one protocol code (pysfu.errors),
so a new kind of RoomError cannot reach a client as internal_error by omission."""

from __future__ import annotations

import pytest

from pysfu import errors, room
from pysfu.auth import AuthError
from pysfu.ortc import OrtcError
from pysfu.signaling.session import protocol_error
from pysfu.transport import AlreadyConnected


def _subclasses(cls: type[Exception]) -> list[type[Exception]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


ROOM_ERRORS = [c for c in _subclasses(room.RoomError) if c is not room.NotFound]


@pytest.mark.parametrize("kind", ROOM_ERRORS, ids=lambda c: c.__name__)
def test_every_room_error_has_a_code(kind: type[Exception]) -> None:
    answer = protocol_error(kind("why"))
    assert answer.code in {getattr(errors, n) for n in errors.__all__ if n.isupper()}
    assert answer.code != errors.INTERNAL_ERROR and answer.message == "why"


def test_the_codes() -> None:
    assert protocol_error(room.RoomClosed("x")).code == errors.NOT_JOINED
    assert protocol_error(room.ConsumerNotFound("x")).code == errors.CONSUMER_NOT_FOUND
    assert protocol_error(AlreadyConnected("x")).code == errors.ALREADY_CONNECTED
    assert protocol_error(OrtcError("unsupported_codec", "x")).code == "unsupported_codec"
    assert protocol_error(AuthError(errors.UNAUTHORIZED, "x")).code == errors.UNAUTHORIZED
    with pytest.raises(TypeError):
        protocol_error(room.NotFound("which kind?"))
