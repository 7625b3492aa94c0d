"""``consumerLayersChanged`` notifications (mediasoup's consumer ``layerschange``, as the
mediasoup demo forwards it): the engine switches a simulcast consumer's layer on its own
(key frames, the viewer's bandwidth estimate), so a small task per simulcast consumer
watches the engine's current spatial and temporal layers and reports each change (the room
tells the owner).

Polling keeps the engine free of Python upcalls on the media path; a few hundred
milliseconds of delay is fine for a notification that only informs the viewer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from pysfu.media import MediaEngine

POLL_INTERVAL = 0.25


async def watch_consumer_layers(media: MediaEngine, handle: int, *,
                                still_open: Callable[[], bool],
                                on_change: Callable[[int, int], None],
                                interval: float = POLL_INTERVAL) -> None:
    """Call ``on_change(spatial_layer, temporal_layer)`` whenever the spatial layer (simulcast
    stream or VP9 SVC layer) or the temporal layer (VP8/VP9 TIDs; 0 while the stream signals
    none) consumer
    ``handle`` forwards changes; ends when ``still_open()`` is false or the engine no longer
    has the consumer (and with the nursery it runs in)."""
    last: tuple[int, int] | None = None
    while still_open():
        stats = media.stats(handle)
        if stats is None:
            return  # removed from the engine in the meantime
        forwarding = stats["packetsSent"] > 0 and not stats["waitingKeyFrame"]
        if forwarding:
            current = (int(stats["currentLayer"]), int(stats.get("currentTemporalLayer", 0)))
            if current != last:
                last = current
                on_change(*current)
        await trio.sleep(interval)
