//! The consumer side of decode target selection by the dependency descriptor (AV1, H264;
//! the filter is dd_filter.rs): its hook in the forwarding path, the key frames it asks for,
//! its preference.

use std::time::Instant;

use crate::bwe::Estimate;
use crate::rtp::{Codec, RtpHeader};

use super::consumer::{Consumer, Kind, Rewrite};
use super::egress::DdFrame;
pub(super) use crate::dd_filter::{DdFilter, ALL};

/// The codecs whose layers the router selects by the dependency descriptor (when the
/// producer negotiated it). VP8 and VP9 are filtered by their payload descriptors instead.
#[inline]
pub(super) fn selects_by_dd(codec: Codec) -> bool {
    matches!(codec, Codec::Av1 | Codec::H264)
}

impl Consumer {
    /// Decode target selection (AV1, H264) of a packet with header `hdr` the consumer
    /// otherwise takes: None when the filter drops it (its sequence number skipped), else
    /// the marker bit to set, if the packet ends the forwarded part of its temporal unit.
    /// A single-stream consumer's layers follow `estimate` (the viewer's bandwidth
    /// estimate; a simulcast consumer's stream does instead, layering.rs), which sets
    /// `key_frame_wanted` when it moves the consumer to layers that need a key frame.
    #[inline]
    pub(super) fn dd_admit(
        &mut self,
        dd: &DdFrame<'_>,
        hdr: &RtpHeader,
        switching: bool,
        now: Instant,
        estimate: Option<Estimate>,
        key_frame_wanted: &mut bool,
    ) -> Option<Rewrite> {
        let (spatial, temporal) = (self.preferred_svc_spatial, self.preferred_temporal);
        let f = self.dd.get_or_insert_with(|| Box::new(DdFilter::new(spatial, temporal, now)));
        f.count(&dd.desc, dd.structure, hdr.payload_len);
        if switching {
            f.sync();
        }
        let estimate = estimate.filter(|_| matches!(self.kind, Kind::Simple));
        if f.follow_estimate(now, estimate) && !self.paused {
            *key_frame_wanted = true;
        }
        let Some(mark) = f.admit(&dd.desc, dd.structure, hdr.timestamp) else {
            self.seq.drop(hdr.sequence);
            return None;
        };
        Some(if mark && !hdr.marker { Rewrite::Marker } else { Rewrite::None })
    }

    /// The stream to ask for a key frame so that an AV1 SVC consumer reaches its preferred
    /// layers (upper spatial layers depend on frames it did not forward).
    pub(super) fn svc_key_frame(&self) -> Option<usize> {
        self.dd.as_ref().filter(|f| !self.paused && f.needs_key_frame()).map(|_| self.encoding)
    }

    /// The viewer's spatial preference within one stream (a simulcast consumer's picks the
    /// stream; within it every spatial layer goes).
    pub(super) fn set_svc_preference(&mut self, now: Instant, spatial: usize) {
        if !matches!(self.kind, Kind::Simulcast(_)) {
            self.preferred_svc_spatial = spatial.min(usize::from(ALL)) as u8;
        }
        if let Some(f) = self.dd.as_mut() {
            f.set_preference(now, self.preferred_svc_spatial, self.preferred_temporal);
        }
    }
}
