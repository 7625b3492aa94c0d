//! Producer state: the payload type table, header extension map and, per encoding (stream),
//! its SSRCs, key frame requests, loss repair and reception statistics.

use std::time::Instant;

use crate::dd::DdStream;
use crate::nack::{self, NackConfig, NackGenerator, RetransmissionBuffer};
use crate::reports::{BitrateSampler, ReceiveStats};
use crate::rtp;

use super::spec::{invalid, EncodingSpec, KeyFrameMethod, ProducerSpec, Result, URI_MID, URI_RID, URI_RRID, URI_TRANSPORT_CC,
    URI_DEPENDENCY_DESCRIPTOR};
use super::share::OwnerSplit;
use super::transport::Counters;
use super::Handle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StreamRef {
    pub(super) producer: Handle,
    pub(super) encoding: usize,
    pub(super) rtx: bool,
}

#[derive(Clone, Copy)]
pub(super) enum PtInfo {
    None,
    Media(usize),
    /// RTX of codec index.
    Rtx(usize),
}

pub(super) struct CodecEntry {
    pub(super) mapped_pt: u8,
    pub(super) codec: rtp::Codec,
    /// The producer's own PT (an RTX packet is restored to it).
    pub(super) payload_type: u8,
}

#[derive(Default)]
pub(super) struct KeyFrameState {
    /// When the outstanding request was sent.
    pub(super) outstanding_since: Option<Instant>,
    /// Another request arrived while one was outstanding (or before the SSRC was known).
    pub(super) wanted: bool,
    pub(super) fir_seq: u8,
    pub(super) requests_sent: u64,
}

pub(super) struct Encoding {
    pub(super) spec: EncodingSpec,
    pub(super) media_ssrc: Option<u32>,
    pub(super) rtx_ssrc: Option<u32>,
    pub(super) kf: KeyFrameState,
    pub(super) stats: Counters,
    pub(super) key_frames: u64,
    /// Loss repair and reports (nack.rs, reports.rs).
    pub(super) quality: StreamQuality,
    /// The stream's dependency descriptor structure (AV1 or H264 with the extension negotiated).
    pub(super) dd: DdStream,
}

/// Loss repair and reception statistics of one producer stream.
pub(super) struct StreamQuality {
    pub(super) rx: ReceiveStats,
    /// Recent packets for viewers' NACKs (video).
    pub(super) buffer: Option<RetransmissionBuffer>,
    /// Upstream NACKs (producer negotiated `nack`).
    pub(super) nack: Option<NackGenerator>,
    /// RTX packets that filled a gap / came for nothing missing.
    pub(super) rtx_in: u64,
    pub(super) rtx_duplicate: u64,
    /// NACK packets sent upstream for this stream.
    pub(super) nacks_sent: u64,
    pub(super) plis_sent: u64,
    pub(super) firs_sent: u64,
    pub(super) rate: BitrateSampler,
}

impl StreamQuality {
    pub(super) fn new(now: Instant, video: bool, nack: bool, clock_rate: u32) -> Self {
        let max_age = if video { nack::MAX_AGE_VIDEO } else { nack::MAX_AGE_AUDIO };
        StreamQuality {
            rx: ReceiveStats::new(now, clock_rate),
            buffer: video.then(|| RetransmissionBuffer::new(now, max_age)),
            nack: nack.then(|| NackGenerator::new(NackConfig { max_age, ..NackConfig::default() })),
            rtx_in: 0,
            rtx_duplicate: 0,
            nacks_sent: 0,
            plis_sent: 0,
            firs_sent: 0,
            rate: BitrateSampler::default(),
        }
    }

    /// The stream starts over (new SSRC or numbering): forget what depended on the old one.
    pub(super) fn restart(&mut self, now: Instant) {
        self.rx = ReceiveStats::new(now, self.rx.clock_rate());
        if let Some(b) = self.buffer.as_mut() {
            b.clear();
        }
        if let Some(g) = self.nack.as_mut() {
            g.reset();
        }
    }
}

pub(super) struct Producer {
    pub(super) transport: Handle,
    pub(super) video: bool,
    pub(super) mid: Option<String>,
    pub(super) pt: Box<[PtInfo; 128]>,
    pub(super) codecs: Vec<CodecEntry>,
    pub(super) encodings: Vec<Encoding>,
    /// producer ext id → router ext id (0 = not forwarded)
    pub(super) ext_map: [u8; 256],
    pub(super) mid_id: Option<u8>,
    pub(super) rid_id: Option<u8>,
    pub(super) rrid_id: Option<u8>,
    /// Transport-wide sequence number extension id (recorded for feedback, not forwarded).
    pub(super) tcc_id: Option<u8>,
    /// Dependency descriptor extension id (read for AV1 and H264; forwarded only if mapped).
    pub(super) dd_id: Option<u8>,
    pub(super) key_frame_request: Option<KeyFrameMethod>,
    pub(super) paused: bool,
    pub(super) consumers: Vec<Handle>,
    /// `consumers` by the worker that forwards them (`share.rs`).
    pub(super) split: OwnerSplit,
    pub(super) stats: Counters,
    pub(super) key_frames: u64,
}

impl Producer {
    /// A producer of transport `transport` from its spec (codecs, payload types, extensions
    /// checked here; MIDs, SSRCs and mapped SSRCs by the caller, after these).
    pub(super) fn from_spec(transport: Handle, spec: &ProducerSpec, now: Instant) -> Result<Producer> {
        if spec.codecs.is_empty() {
            return Err(invalid("producer spec: no codecs"));
        }
        if spec.encodings.is_empty() {
            return Err(invalid("producer spec: no encodings"));
        }
        let (pt, codecs) = payload_types(spec)?;
        let ext = ExtIds::from_spec(spec)?;
        let clock_rate = spec.codecs[0].clock_rate.unwrap_or(if spec.video { 90000 } else { 48000 });
        let encodings = spec
            .encodings
            .iter()
            .map(|e| Encoding {
                spec: e.clone(),
                // Signalled SSRCs are bound up front.
                media_ssrc: e.ssrc,
                rtx_ssrc: e.rtx_ssrc,
                kf: KeyFrameState::default(),
                stats: Counters::default(),
                key_frames: 0,
                quality: StreamQuality::new(now, spec.video, spec.nack, clock_rate),
                dd: DdStream::new(),
            })
            .collect();
        Ok(Producer {
            transport,
            video: spec.video,
            mid: spec.mid.clone(),
            pt,
            codecs,
            encodings,
            ext_map: ext.map,
            mid_id: ext.mid,
            rid_id: ext.rid,
            rrid_id: ext.rrid,
            tcc_id: ext.tcc,
            dd_id: ext.dd,
            key_frame_request: spec.key_frame_request.clone(),
            paused: spec.paused,
            consumers: Vec::new(),
            split: OwnerSplit::default(),
            stats: Counters::default(),
            key_frames: 0,
        })
    }

    /// Router extension id of producer extension `id`, if forwarded.
    #[inline]
    pub(super) fn map_ext(&self, id: u8) -> Option<u8> {
        let r = self.ext_map[id as usize];
        (r != 0).then_some(r)
    }
}

/// The producer's payload types (media and RTX) → codec index, and its codecs.
fn payload_types(spec: &ProducerSpec) -> Result<(Box<[PtInfo; 128]>, Vec<CodecEntry>)> {
    let mut pt = Box::new([PtInfo::None; 128]);
    let mut codecs = Vec::new();
    for (i, c) in spec.codecs.iter().enumerate() {
        for v in [Some(c.payload_type), Some(c.mapped_payload_type), c.rtx_payload_type, c.mapped_rtx_payload_type]
            .into_iter()
            .flatten()
        {
            if v > 127 {
                return Err(invalid(format!("producer spec: payload type {v} > 127")));
            }
        }
        if c.rtx_payload_type.is_some() != c.mapped_rtx_payload_type.is_some() {
            return Err(invalid("producer spec: rtx_payload_type and mapped_rtx_payload_type go together"));
        }
        if !matches!(pt[c.payload_type as usize], PtInfo::None) {
            return Err(invalid(format!("producer spec: payload type {} used twice", c.payload_type)));
        }
        pt[c.payload_type as usize] = PtInfo::Media(i);
        if let Some(r) = c.rtx_payload_type {
            if !matches!(pt[r as usize], PtInfo::None) {
                return Err(invalid(format!("producer spec: payload type {r} used twice")));
            }
            pt[r as usize] = PtInfo::Rtx(i);
        }
        codecs.push(CodecEntry {
            mapped_pt: c.mapped_payload_type,
            codec: rtp::Codec::from_mime(&c.mime),
            payload_type: c.payload_type,
        });
    }
    Ok((pt, codecs))
}

/// Header extension ids of a producer: the forwarded ones mapped to router ids, and the ones
/// the router reads itself.
struct ExtIds {
    map: [u8; 256],
    mid: Option<u8>,
    rid: Option<u8>,
    rrid: Option<u8>,
    tcc: Option<u8>,
    dd: Option<u8>,
}

impl ExtIds {
    fn from_spec(spec: &ProducerSpec) -> Result<ExtIds> {
        let mut x = ExtIds { map: [0u8; 256], mid: None, rid: None, rrid: None, tcc: None, dd: None };
        for e in &spec.header_extensions {
            if e.id == 0 {
                return Err(invalid(format!("producer spec: bad extension id {}", e.id)));
            }
            if let Some(r) = e.router_id {
                if r == 0 {
                    return Err(invalid("producer spec: router extension id 0"));
                }
            }
            match e.uri.as_str() {
                URI_MID => x.mid = Some(e.id),
                URI_RID => x.rid = Some(e.id),
                URI_RRID => x.rrid = Some(e.id),
                URI_TRANSPORT_CC => x.tcc = Some(e.id),
                URI_DEPENDENCY_DESCRIPTOR => {
                    x.dd = Some(e.id);
                    x.map[e.id as usize] = e.router_id.unwrap_or(0);
                }
                _ => x.map[e.id as usize] = e.router_id.unwrap_or(0),
            }
        }
        Ok(x)
    }
}
