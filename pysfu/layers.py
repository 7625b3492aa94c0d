"""``consumerLayersChanged`` notifications (mediasoup's consumer ``layerschange``, as the
mediasoup demo forwards it): the engine switches a simulcast consumer's layer on its own
(key frames, the viewer's bandwidth estimate), so a small task per simulcast consumer
watches the engine's current layer and tells the consumer's owner when it changes.

Polling keeps the engine free of Python upcalls on the media path; a few hundred
milliseconds of delay is fine for a notification that only informs the viewer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from pysfu.log import log_event

if TYPE_CHECKING:
    from pysfu.room import Consumer, Room

logger = logging.getLogger("pysfu.layers")

POLL_INTERVAL = 0.25


async def watch_consumer_layers(room: Room, consumer: Consumer,
                                interval: float = POLL_INTERVAL) -> None:
    """Notify the owner of ``consumer`` whenever the layer it receives changes; ends when
    the consumer is closed (and with the room's nursery)."""
    last: int | None = None
    while room.consumers.get(consumer.id) is consumer:
        try:
            stats = room.ctx.media.stats(consumer.handle)
        except KeyError:
            return  # removed from the engine in the meantime
        forwarding = stats["packets_out"] > 0 and not stats["waiting_key_frame"]
        current = stats["current_layer"] if forwarding else None
        if current is not None and current != last:
            last = current
            owner = room.peers.get(consumer.owner)
            if owner is not None and owner.notify is not None:
                owner.notify("consumerLayersChanged",
                             {"consumerId": consumer.id, "spatialLayer": current})
            log_event(logger, "consumer.layers_changed", room=room.id, peer=consumer.owner,
                      consumer=consumer.id, spatial=current)
        await trio.sleep(interval)
