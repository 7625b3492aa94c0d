//! Egress: one producer packet fanned out to its consumers (each consumer's own `forward`),
//! the rewrite shared by forwarding and retransmission, and our own RTCP, protected.

use crate::remote::Remote;
use std::time::Instant;

use crate::dd;
use crate::fasthash::HandleMap;
use crate::rtp;

use super::consumer::Consumer;
use super::output::{DropReason, Drops, Output};
use super::seal::TxSrtp;
use super::transport::{Counters, Transport};
use super::Handle;

/// A producer packet (decrypted, RTX restored) as every consumer sees it.
pub(super) struct Ingress<'a> {
    /// The plain RTP packet.
    pub(super) data: &'a [u8],
    pub(super) hdr: &'a rtp::RtpHeader,
    /// The producer stream (encoding) it belongs to.
    pub(super) encoding: usize,
    /// Its payload type in the router's numbering.
    pub(super) router_pt: u8,
    pub(super) key_frame: bool,
    /// Its codec (VP8 packets go through the consumers' temporal layer filter).
    pub(super) codec: rtp::Codec,
    /// Key frames of this codec are detected (else consumers start on any packet).
    pub(super) has_key_frames: bool,
    /// Producer extension id → router extension id (0 = not forwarded).
    pub(super) ext_map: &'a [u8; 256],
    /// AV1, H264: the packet's dependency descriptor and its stream's structure, if it had a valid one.
    pub(super) dd: Option<DdFrame<'a>>,
}

/// A parsed dependency descriptor with the structure it was resolved against.
#[derive(Clone, Copy)]
pub(super) struct DdFrame<'a> {
    pub(super) desc: dd::Descriptor,
    pub(super) structure: &'a dd::Structure,
}

impl Ingress<'_> {
    #[inline]
    pub(super) fn map_ext(&self, id: u8) -> Option<u8> {
        let r = self.ext_map[id as usize];
        (r != 0).then_some(r)
    }
}

/// What a consumer's `forward` needs besides itself and the packet.
pub(super) struct Fanout<'a> {
    pub(super) transports: &'a mut HandleMap<Transport>,
    pub(super) drops: &'a mut Drops,
    pub(super) out: &'a mut Output,
    /// Transports sent their first forwarded packet by this fan-out, and where.
    pub(super) first_media: &'a mut Vec<(Handle, Remote)>,
    /// A consumer's layer filter wants a key frame of the stream (VP9 k-SVC layer change).
    pub(super) key_frame_wanted: bool,
}

/// Consumers a fan-out asks the cache for at a time (`fan_out` with `warm_ahead`), as a
/// worker's part.
const WARM_AHEAD: usize = 8;

/// Forward `pkt` to each of `consumers`; the number of packets and bytes queued. With
/// `warm_ahead` (the caller has not asked the cache for them: one worker, a producer
/// forwarded whole) they are asked for `WARM_AHEAD` at a time (`warm`) before being
/// forwarded.
#[inline]
pub(super) fn fan_out(
    all: &mut HandleMap<Consumer>,
    consumers: &[Handle],
    pkt: &Ingress<'_>,
    cx: &mut Fanout<'_>,
    now: Instant,
    warm_ahead: bool,
) -> (u64, u64) {
    let (mut packets, mut bytes) = (0u64, 0u64);
    let step = if warm_ahead { WARM_AHEAD } else { consumers.len().max(1) };
    for part in consumers.chunks(step) {
        if warm_ahead {
            warm(all, cx.transports, part);
        }
        for ch in part {
            let Some(c) = all.get_mut(ch) else { continue };
            if let Some(len) = c.forward(pkt, cx, now) {
                packets += 1;
                bytes += len as u64;
            }
        }
    }
    (packets, bytes)
}

/// Ask the cache for the state forwarding to `part` touches: each consumer's record and the
/// entry of its next packet, its transport's record, send-side estimator and SRTP keys, in
/// one pass so that the loads of different consumers overlap (`prefetch.rs`).
pub(super) fn warm(all: &HandleMap<Consumer>, transports: &HandleMap<Transport>, part: &[Handle]) {
    for h in part {
        let Some(c) = all.get(h) else { continue };
        c.prefetch();
        if let Some(t) = transports.get(&c.transport) {
            t.prefetch();
        }
    }
}

/// Protect an RTCP packet we built and queue it to `dest`, counting it on its transport;
/// false (the buffer recycled, the drop counted) if protection failed.
pub(super) fn push_rtcp(
    tx: &mut TxSrtp,
    stats: &mut Counters,
    rtcp_out: &mut u64,
    drops: &mut Drops,
    out: &mut Output,
    dest: Remote,
    mut buf: Vec<u8>,
) -> bool {
    let Ok(seal) = tx.protect_rtcp(&mut buf) else {
        drops.inc(DropReason::ProtectFailed);
        out.give_back(buf);
        return false;
    };
    stats.tx(tx.wire_len(buf.len(), seal));
    *rtcp_out += 1;
    out.push_sealed(dest, buf, seal);
    true
}

/// Where a producer packet goes for one consumer: its sequence number, timestamp, SSRC, PT,
/// and (transport-cc viewers) the transport-wide sequence number with its extension id.
#[derive(Clone, Copy)]
pub(super) struct Egress {
    pub(super) seq: u16,
    pub(super) timestamp: u32,
    pub(super) ssrc: u32,
    pub(super) pt: u8,
    pub(super) tcc: Option<(u8, u16)>,
}

/// Write the consumer's copy of `pkt` into `buf`: router extension ids (plus the consumer's
/// mid and transport-wide sequence number), then its sequence number, timestamp, SSRC and payload type. Shared by forwarding and
/// retransmission so both always produce the same packet.
pub(super) fn write_egress(
    buf: &mut Vec<u8>,
    pkt: &[u8],
    hdr: &rtp::RtpHeader,
    map: &impl Fn(u8) -> Option<u8>,
    mid: Option<(u8, &[u8])>,
    e: Egress,
) -> std::result::Result<(), rtp::RtpError> {
    let tcc = e.tcc.map(|(id, seq)| (id, seq.to_be_bytes()));
    match (mid, &tcc) {
        (Some(m), Some((id, v))) => rtp::rewrite_extensions(buf, pkt, hdr, map, &[m, (*id, v)])?,
        (Some(m), None) => rtp::rewrite_extensions(buf, pkt, hdr, map, &[m])?,
        (None, Some((id, v))) => rtp::rewrite_extensions(buf, pkt, hdr, map, &[(*id, v)])?,
        (None, None) => rtp::rewrite_extensions(buf, pkt, hdr, map, &[])?,
    }
    rtp::set_sequence(buf, e.seq);
    rtp::set_timestamp(buf, e.timestamp);
    rtp::set_ssrc(buf, e.ssrc);
    rtp::set_payload_type(buf, e.pt);
    Ok(())
}
