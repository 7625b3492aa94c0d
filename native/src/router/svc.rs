//! The consumer side of VP9 SVC (svc.rs holds the filter): its hook in the forwarding path,
//! the marker of retransmissions, and the layers its stats report.

use std::time::Instant;

use crate::rtp::Codec;
use crate::svc::Verdict;
use crate::vp9;

use super::consumer::{Consumer, Kind, Rewrite};
use super::egress::Ingress;

impl Consumer {
    /// The spatial layer being forwarded: the simulcast stream, the VP9 SVC layer, or within
    /// a single AV1 SVC stream the decode target's spatial layer.
    pub(super) fn current_spatial(&self) -> usize {
        match &self.kind {
            Kind::Svc(f) => f.current().map_or(0, |l| l.spatial as usize),
            Kind::Simple => self.dd.as_ref().and_then(|f| f.current_layers()).map_or(self.encoding, |(s, _)| usize::from(s)),
            _ => self.encoding,
        }
    }

    /// The temporal layer being forwarded (None: the stream signals no temporal layers).
    pub(super) fn current_temporal(&self) -> Option<u8> {
        if let Kind::Svc(f) = &self.kind {
            return f.current().map(|l| l.temporal);
        }
        let dd = || self.dd.as_ref().and_then(|f| f.current_layers()).map(|(_, t)| t);
        self.vp8.as_ref().and_then(|f| f.current()).or_else(dd)
    }

    /// Frames a layer filter did not forward: VP8 temporal layers, VP9 SVC layers, AV1 and
    /// H264 decode targets.
    pub(super) fn layer_frames_dropped(&self) -> u64 {
        match &self.kind {
            Kind::Svc(f) => f.temporal_frames_dropped,
            _ => self.vp8.as_ref().map_or(0, |f| f.frames_dropped) + self.dd.as_ref().map_or(0, |f| f.frames_dropped),
        }
    }

    /// The spatial layer the consumer moves to (simulcast stream or SVC layer).
    pub(super) fn target_spatial(&self) -> usize {
        match &self.kind {
            Kind::Svc(f) => f.target().spatial as usize,
            Kind::Simple => self.dd.as_ref().filter(|f| f.current_layers().is_some()).map_or(self.encoding, |f| usize::from(f.target_spatial())),
            _ => self.target(),
        }
    }

    /// VP9 SVC layer selection of a packet the consumer otherwise takes (`estimate`: the
    /// viewer's bandwidth estimate): None when the filter drops it (its sequence number
    /// skipped; a payload without a valid descriptor is dropped and counted). Sets
    /// `key_frame_wanted` when the estimate moves the consumer to a layer that needs a key
    /// picture.
    pub(super) fn svc_admit(
        &mut self,
        pkt: &Ingress<'_>,
        switching: bool,
        now: Instant,
        estimate: Option<crate::bwe::Estimate>,
        key_frame_wanted: &mut bool,
    ) -> Option<Rewrite> {
        let Kind::Svc(f) = &mut self.kind else { return Some(Rewrite::None) };
        let Ok(d) = vp9::parse(pkt.hdr.payload(pkt.data)) else {
            self.dropped += 1;
            self.seq.drop(pkt.hdr.sequence);
            return None;
        };
        f.count(&d, pkt.hdr.payload_len);
        if switching {
            f.restart();
        }
        if f.decide(now, estimate) {
            *key_frame_wanted = true;
        }
        match f.admit(&d, pkt.hdr.timestamp, pkt.hdr.marker, pkt.key_frame) {
            Verdict::Drop => {
                self.seq.drop(pkt.hdr.sequence);
                None
            }
            Verdict::Forward { marker } => Some(if marker && !pkt.hdr.marker { Rewrite::Marker } else { Rewrite::None }),
        }
    }

    /// Whether a retransmitted VP9 packet of an SVC consumer gets the marker bit (the end of
    /// the highest layer it forwards).
    pub(super) fn svc_marker_again(&self, codec: Codec, payload: &[u8]) -> bool {
        let Kind::Svc(f) = &self.kind else { return false };
        codec == Codec::Vp9 && vp9::parse(payload).is_ok_and(|d| f.marker_again(&d))
    }
}
