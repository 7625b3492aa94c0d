"""Placement by load (pysfu/cluster/placement.py), sans-IO: the load score, the choice of
node (margin, nodes without node_url, draining nodes, recent redirects) and the rates the
registry publishes (forwarded packets/s and CPU percent between two samples)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pysfu.cluster.placement import (
    CPU_PERCENT_PER_POINT,
    PLACEMENT_MARGIN,
    PPS_PER_POINT,
    REDIRECT_MEMORY,
    REDIRECT_WEIGHT,
    ROOM_WEIGHT,
    LoadMeter,
    Placer,
    score,
)


def entry(node: str, url: str | None = "ws://x/ws", draining: bool = False,
          **load: float) -> dict[str, Any]:
    return {"id": node, "nodeUrl": url, "load": {**load, "draining": draining}}


def test_score_weighs_peers_rooms_packets_and_cpu() -> None:
    assert score({}) == 0
    assert score({"peers": 3}) == 3
    assert score({"rooms": 2}) == 2 * ROOM_WEIGHT
    assert score({"pps": PPS_PER_POINT * 4}) == pytest.approx(4)
    assert score({"cpu": CPU_PERCENT_PER_POINT * 2}) == pytest.approx(2)
    # Bad fields (another version's entry, garbage) count nothing instead of failing.
    assert score({"peers": "many", "rooms": True, "pps": float("nan"), "cpu": -50}) == 0


def test_a_busy_node_sends_the_host_to_the_least_loaded_node() -> None:
    placer = Placer("a")
    busy = {"peers": 20, "rooms": 1}
    target = placer.choose(busy, [entry("a", peers=20), entry("b", peers=4),
                                  entry("c", peers=1, url="ws://c/ws")], now=0.0)
    assert target is not None and (target.node_id, target.url) == ("c", "ws://c/ws")


def test_margin_keeps_hosts_on_nodes_of_about_the_same_load() -> None:
    placer = Placer("a")
    others = [entry("b", peers=10)]
    assert placer.choose({"peers": 10}, others, now=0.0) is None  # equal: no bounce
    assert placer.choose({"peers": 10 + PLACEMENT_MARGIN}, others, now=0.0) is None
    assert placer.choose({"peers": 11 + PLACEMENT_MARGIN}, others, now=0.0) is not None
    # Each of two equal nodes keeps its own hosts: no ping-pong.
    assert Placer("b").choose({"peers": 10}, [entry("a", peers=10)], now=0.0) is None


def test_nodes_without_url_draining_or_itself_are_never_chosen() -> None:
    placer = Placer("a")
    entries = [entry("a", peers=0), entry("b", url=None), entry("c", url=""),
               entry("d", draining=True), {"id": "e", "nodeUrl": "ws://e/ws"},
               {"nodeUrl": "ws://f/ws", "load": {}}]
    assert placer.choose({"peers": 100}, entries, now=0.0) is None
    target = placer.choose({"peers": 100}, [*entries, entry("g", peers=50)], now=0.0)
    assert target is not None and target.node_id == "g"


def test_a_leaving_node_sends_hosts_to_any_eligible_node() -> None:
    placer = Placer("a")
    entries = [entry("b", peers=40), entry("c", url=None), entry("d", draining=True)]
    assert placer.choose({}, entries, now=0.0) is None  # b is busier: stay
    target = placer.choose({}, entries, now=0.0, leaving=True)  # draining: b will do
    assert target is not None and target.node_id == "b"
    assert placer.choose({}, entries[1:], now=0.0, leaving=True) is None  # nowhere to go


def test_recent_redirects_count_on_their_target_until_they_expire() -> None:
    placer = Placer("a")
    entries = [entry("b", peers=0), entry("c", peers=REDIRECT_WEIGHT * 2 - 1)]
    own = {"peers": 30}
    chosen = []
    for i in range(4):
        target = placer.choose(own, entries, now=float(i))
        assert target is not None
        placer.note_redirect(target, now=float(i))
        chosen.append(target.node_id)
    # b until its redirects make it look busier than c, then c, then b again.
    assert chosen == ["b", "b", "c", "b"]
    later = placer.choose(own, entries, now=3.0 + REDIRECT_MEMORY + 0.1)
    assert later is not None and later.node_id == "b" and later.score == 0


def test_load_meter_turns_counters_into_rates() -> None:
    meter = LoadMeter()
    meter.sample(100.0, cpu_seconds=5.0, forwarded=1000)
    assert (meter.pps, meter.cpu) == (0, 0)  # one sample: no rate yet
    meter.sample(102.0, cpu_seconds=5.5, forwarded=7000)
    assert meter.pps == pytest.approx(3000) and meter.cpu == pytest.approx(25)
    meter.sample(102.0, cpu_seconds=9.0, forwarded=9000)  # no time passed: kept
    assert meter.pps == pytest.approx(3000)
    meter.sample(104.0, cpu_seconds=9.0, forwarded=9000)
    assert (meter.pps, meter.cpu) == (0, 0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)
entries = st.lists(st.dictionaries(
    st.sampled_from(["id", "nodeUrl", "load", "url"]),
    json_values | st.dictionaries(st.sampled_from(["peers", "rooms", "pps", "cpu",
                                                   "draining"]), json_values)), max_size=6)


@given(entries, st.dictionaries(st.text(max_size=8), json_values, max_size=4))
def test_any_registry_content_is_a_choice_or_none_never_a_crash(
        registry: list[dict[str, Any]], own: dict[str, Any]) -> None:
    """Entries written by another version or by anyone with access to Redis: bad fields
    count nothing, bad entries are skipped."""
    target = Placer("a").choose(own, registry, now=0.0)
    if target is not None:
        assert target.node_id != "a" and target.url
        assert any(e.get("id") == target.node_id and e.get("nodeUrl") == target.url
                   for e in registry)
