"""Where a new room goes (``cluster_placement = least_loaded``), sans-IO: the time and every
node's registry entry are passed in.

A node's load, as it publishes it in the registry (``LoadMeter``): ``rooms``, ``peers``,
``pps`` (RTP packets forwarded per second, from the engine's counters, over the last refresh
period), ``cpu`` (the process's CPU time over that period, percent of one core) and
``draining``. Its *score* is one number in "peer equivalents"::

    score = peers * PEER_WEIGHT + rooms * ROOM_WEIGHT + pps / PPS_PER_POINT
            + cpu / CPU_PERCENT_PER_POINT

Peers and rooms say what is coming (a room just opened forwards little yet), packets per
second and CPU say what it costs now. ``Placer.choose`` sends a host opening a new room to
another node only if that node's score is lower than this node's by more than
``PLACEMENT_MARGIN`` (hysteresis: nodes with about the same load never bounce hosts), and
only to nodes that published a ``node_url`` (``nodeUrl``: where a client can reach them) and
are not draining. Entries are up to one refresh old: each redirect this node made counts
``REDIRECT_WEIGHT`` on its target for ``REDIRECT_MEMORY`` seconds, so a burst of new rooms is
not all sent to the one node that looked idle.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

PEER_WEIGHT = 1.0
ROOM_WEIGHT = 2.0
PPS_PER_POINT = 500.0  # forwarded packets per second worth one peer (~ a viewer of 1.5 Mb/s video)
CPU_PERCENT_PER_POINT = 5.0  # one core fully busy = 20 points
PLACEMENT_MARGIN = 5.0  # redirect only to a node this many points below this node
REDIRECT_WEIGHT = ROOM_WEIGHT + PEER_WEIGHT  # what a redirected host will soon add there
REDIRECT_MEMORY = 6.0  # seconds a redirect counts on its target (the registry's TTL)
MAX_REMEMBERED_REDIRECTS = 1024


def score(load: dict[str, Any]) -> float:
    """The load score of a registry entry's ``load`` (missing or bad fields count 0)."""
    def num(name: str) -> float:
        value = load.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            return 0.0
        return max(0.0, float(value))

    return (num("peers") * PEER_WEIGHT + num("rooms") * ROOM_WEIGHT
            + num("pps") / PPS_PER_POINT + num("cpu") / CPU_PERCENT_PER_POINT)


@dataclass(frozen=True)
class Target:
    """A node a host is redirected to."""

    node_id: str
    url: str
    score: float


class Placer:
    """Chooses the node for a new room; remembers its recent redirects."""

    def __init__(self, node_id: str, margin: float = PLACEMENT_MARGIN) -> None:
        self.node_id = node_id
        self.margin = margin
        self._sent: deque[tuple[float, str]] = deque()  # (time, target node), oldest first

    def _recent(self, now: float) -> dict[str, int]:
        while self._sent and (self._sent[0][0] <= now - REDIRECT_MEMORY
                              or len(self._sent) > MAX_REMEMBERED_REDIRECTS):
            self._sent.popleft()
        counts: dict[str, int] = {}
        for _, node in self._sent:
            counts[node] = counts.get(node, 0) + 1
        return counts

    def choose(self, own_load: dict[str, Any], entries: list[dict[str, Any]],
               now: float, *, leaving: bool = False) -> Target | None:
        """The node a host opening a new room here goes to, or None (it stays here).
        ``entries``: the registry's node entries (this node's own is skipped; ``own_load``
        is used for it). ``leaving``: this node takes no new rooms (draining), any other
        node will do."""
        recent = self._recent(now)
        own = score(own_load)
        best: Target | None = None
        for entry in entries:
            node_id, url, load = entry.get("id"), entry.get("nodeUrl"), entry.get("load")
            if not isinstance(node_id, str) or node_id == self.node_id:
                continue
            if not isinstance(url, str) or not url or not isinstance(load, dict):
                continue  # no node_url: clients cannot be sent there
            if load.get("draining") is True:
                continue
            value = score(load) + recent.get(node_id, 0) * REDIRECT_WEIGHT
            if best is None or value < best.score or (value == best.score
                                                      and node_id < best.node_id):
                best = Target(node_id, url, value)
        if best is None or (not leaving and own - best.score <= self.margin):
            return None
        return best

    def note_redirect(self, target: Target, now: float) -> None:
        self._sent.append((now, target.node_id))


@dataclass
class LoadMeter:
    """Rates between two samples: forwarded packets per second and CPU percent of one core.
    ``sample`` is given the time (monotonic seconds), the process's CPU seconds so far and
    the engine's forwarded packets so far (counters that never go down)."""

    _last: tuple[float, float, int] | None = None
    pps: float = 0.0
    cpu: float = 0.0

    def sample(self, now: float, cpu_seconds: float, forwarded: int) -> None:
        last, self._last = self._last, (now, cpu_seconds, forwarded)
        if last is None or now <= last[0]:
            return
        elapsed = now - last[0]
        self.pps = max(0, forwarded - last[2]) / elapsed
        self.cpu = max(0.0, cpu_seconds - last[1]) / elapsed * 100.0


__all__ = ["CPU_PERCENT_PER_POINT", "PEER_WEIGHT", "PLACEMENT_MARGIN", "PPS_PER_POINT",
           "REDIRECT_MEMORY", "REDIRECT_WEIGHT", "ROOM_WEIGHT", "LoadMeter", "Placer", "Target",
           "score"]
