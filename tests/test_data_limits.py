"""A data producer's limits (pysfu.data.DataLimits, sans-IO: time passed in): messages/s,
bytes/s (token buckets with a burst) and the message size, each refused with its reason."""

from __future__ import annotations

import dataclasses

from pysfu.config import Config
from pysfu.data import DataLimits


def limits(now: float = 0.0, **overrides: object) -> DataLimits:
    return DataLimits(dataclasses.replace(Config(), **overrides), now)


def test_message_size_over_the_limit_is_refused_and_not_charged() -> None:
    lim = limits(max_data_message_size=1000, data_bytes_burst=1500, data_bytes_per_second=1.0,
                 data_message_burst=1, data_messages_per_second=1.0)
    assert lim.check(1001, 0.0) == "message_size"
    # The refused message took nothing: a message of exactly the limit still passes.
    assert lim.check(1000, 0.0) is None
    assert lim.check(1, 0.0) == "messages_per_second"


def test_bytes_per_second_with_a_burst_then_the_refill() -> None:
    lim = limits(data_bytes_per_second=1000.0, data_bytes_burst=5000,
                 data_messages_per_second=1000.0, data_message_burst=1000)
    got = [lim.check(1000, 0.0) for _ in range(7)]
    assert got == [None] * 5 + ["bytes_per_second"] * 2
    assert lim.check(1000, 0.5) == "bytes_per_second"  # 500 bytes back only
    assert lim.check(500, 0.5) is None
    assert lim.check(1000, 1.5) is None  # one second later: 1000 more
    assert lim.check(1, 1.5) == "bytes_per_second"
    # The bucket never holds more than its burst, however long it was idle.
    assert [lim.check(1000, 100.0) for _ in range(6)] == [None] * 5 + ["bytes_per_second"]


def test_messages_per_second_with_a_burst_then_the_refill() -> None:
    lim = limits(data_messages_per_second=10.0, data_message_burst=3)
    assert [lim.check(10, 0.0) for _ in range(4)] == [None, None, None, "messages_per_second"]
    assert lim.check(10, 0.05) == "messages_per_second"
    assert lim.check(10, 0.11) is None  # 1/10 s later: one more message


def test_a_message_refused_for_its_rate_is_not_charged_in_bytes() -> None:
    lim = limits(data_messages_per_second=1.0, data_message_burst=1,
                 data_bytes_per_second=1.0, data_bytes_burst=100)
    assert lim.check(50, 0.0) is None
    assert lim.check(50, 0.0) == "messages_per_second"
    assert lim.check(50, 1.0) is None  # the 50 bytes the refused one would have taken are there
