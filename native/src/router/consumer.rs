//! Consumer state and the consumer's own part of forwarding: which of the producer's packets
//! it takes (one `Kind` per way of following a producer), sequence number and timestamp
//! continuity, and the rewrite and protection of its copy of each packet.
//!
//! A new way of consuming (pipe, plain RTP, SVC filtering) is another `Kind` with its own
//! stream selection, not another branch in the fan-out loop.

use std::time::Instant;

use crate::budget::RetransmitBudget;
use crate::layers::LayerState;
use crate::nack::SeqMap;
use crate::reports::{BitrateSampler, SendStats};
use crate::rtp::Codec;
use crate::seq::{SeqManager, TsOffset};
use crate::svc::SvcFilter;
use crate::vp8::{self, TemporalFilter};

use super::egress::{write_egress, Egress, Fanout, Ingress};
use super::output::DropReason;
use super::spec::{invalid, ConsumerSpec, Result};
use super::svc_dd::{self, DdFilter};
use super::transport::Counters;
use super::{Handle, Rng};

/// How a consumer follows its producer.
pub(super) enum Kind {
    /// A producer with one stream: every packet, timestamps as the producer sent them.
    Simple,
    /// One of a producer's simulcast streams at a time, switched at the target's key frames.
    Simulcast(Simulcast),
    /// Router to router: every stream of the producer, each with its own SSRC, sequence
    /// numbers and timestamps unchanged (the far router's producer presents the same streams).
    Pipe(Box<Pipe>),
    /// A VP9 SVC producer's one stream with the spatial and temporal layers above the
    /// consumer's dropped (svc.rs).
    Svc(Box<SvcFilter>),
}

/// What a codec's layer filter changes in a packet it forwards.
pub(super) enum Rewrite {
    None,
    /// VP8 PictureID / TL0PICIDX.
    Vp8(Vp8Rewrite),
    /// Set the RTP marker bit (the end of the picture the viewer gets).
    Marker,
}

/// The streams of a pipe consumer, one per producer encoding.
pub(super) struct Pipe {
    pub(super) streams: Vec<PipeStream>,
}

pub(super) struct PipeStream {
    pub(super) ssrc: u32,
    pub(super) rtx_ssrc: Option<u32>,
    pub(super) rtx_seq: u16,
    /// Sender report state of this stream.
    pub(super) tx: SendStats,
}

/// Layer state of a simulcast consumer.
pub(super) struct Simulcast {
    /// The encoding to switch to at its next key frame (== the consumer's `encoding` when settled).
    pub(super) target: usize,
    /// The highest spatial layer the viewer wants.
    pub(super) preferred_spatial: usize,
    pub(super) layers: LayerState,
    pub(super) layer_switches: u64,
    /// Timestamp offset: keeps time continuous when the source stream changes.
    pub(super) ts: TsOffset,
    /// The encoding whose timestamps `ts` is set up for.
    pub(super) ts_source: usize,
    /// The stream and offset before the last switch (retransmissions of older packets).
    pub(super) ts_prev: (usize, u32),
}

/// Loss repair and sending statistics of one consumer stream.
pub(super) struct ConsumerQuality {
    /// Output → input sequence numbers (viewers' NACKs name output numbers).
    pub(super) seq_map: Option<SeqMap>,
    pub(super) tx: SendStats,
    /// router PT → consumer RTX PT.
    pub(super) rtx_pt: Vec<(u8, u8)>,
    pub(super) rtx_seq: u16,
    pub(super) nack: bool,
    pub(super) cname: Vec<u8>,
    pub(super) nacks_in: u64,
    pub(super) nack_seqs_in: u64,
    pub(super) plis_in: u64,
    pub(super) firs_in: u64,
    pub(super) rate: BitrateSampler,
    /// What retransmissions to this consumer may cost (budget.rs).
    pub(super) budget: RetransmitBudget,
    pub(super) nack_budget_drops: u64,
    pub(super) nack_max_resend_drops: u64,
}

pub(super) struct Consumer {
    pub(super) transport: Handle,
    pub(super) producer: Handle,
    pub(super) ssrc: u32,
    pub(super) rtx_ssrc: Option<u32>,
    pub(super) mid: Option<Vec<u8>>,
    pub(super) mid_ext_id: Option<u8>,
    /// Transport-wide sequence number extension id (the viewer negotiated transport-cc).
    pub(super) tcc_ext_id: Option<u8>,
    /// router PT → consumer PT (0xff = not negotiated)
    pub(super) pt: [u8; 128],
    pub(super) paused: bool,
    /// The producer encoding (stream) being forwarded.
    pub(super) encoding: usize,
    pub(super) last_out: Option<Instant>,
    pub(super) seq: SeqManager,
    pub(super) wait_key_frame: bool,
    pub(super) stats: Counters,
    pub(super) dropped: u64,
    pub(super) key_frame_requests_in: u64,
    pub(super) quality: ConsumerQuality,
    pub(super) kind: Kind,
    /// The highest temporal layer the viewer wants (`vp8::ALL_LAYERS`: every layer).
    pub(super) preferred_temporal: u8,
    /// VP8: temporal layer selection and PictureID / TL0PICIDX rewriting (made at the
    /// consumer's first VP8 packet; None for other codecs and for pipes).
    pub(super) vp8: Option<Box<TemporalFilter>>,
    /// The highest spatial layer the viewer wants within one stream (AV1 SVC).
    pub(super) preferred_svc_spatial: u8,
    /// Decode target selection by the dependency descriptor, AV1 and H264 (svc_dd.rs; made
    /// at the first packet with a descriptor).
    pub(super) dd: Option<Box<DdFilter>>,
}

/// A VP8 packet's descriptor and the PictureID and TL0PICIDX to write into it.
pub(super) type Vp8Rewrite = (vp8::Descriptor, Option<u16>, Option<u8>);

/// router PT → consumer PT (0xff: not negotiated), and router PT → consumer RTX PT.
type PayloadTypes = ([u8; 128], Vec<(u8, u8)>);

/// The consumer's payload type maps from its spec.
fn payload_types(spec: &ConsumerSpec) -> Result<PayloadTypes> {
    let mut pt = [0xffu8; 128];
    for &(r, c) in &spec.payload_types {
        if r > 127 || c > 127 {
            return Err(invalid(format!("consumer spec: payload type {r}->{c} out of range")));
        }
        pt[r as usize] = c;
    }
    let mut rtx_pt = Vec::new();
    for &(r, x) in &spec.rtx_payload_types {
        if r > 127 || x > 127 {
            return Err(invalid(format!("consumer spec: RTX payload type {r}->{x} out of range")));
        }
        rtx_pt.push((r, x));
    }
    Ok((pt, rtx_pt))
}

/// The spec's own consistency (SSRCs, MID); what depends on the transport is the caller's.
fn check(spec: &ConsumerSpec) -> Result<()> {
    if spec.rtx_ssrc == Some(spec.ssrc) {
        return Err(invalid("consumer spec: rtx_ssrc equals ssrc"));
    }
    if let Some(m) = &spec.mid {
        if m.is_empty() || m.len() > 16 {
            return Err(invalid(format!("consumer spec: mid {m:?} must be 1..16 bytes")));
        }
        if spec.mid_ext_id.is_none() {
            return Err(invalid("consumer spec: mid given without mid_ext_id"));
        }
    }
    let mut pipe: Vec<u32> = spec.pipe_ssrcs.iter().flat_map(|&(s, r)| [Some(s), r]).flatten().collect();
    pipe.sort_unstable();
    if pipe.windows(2).any(|w| w[0] == w[1]) {
        return Err(invalid("consumer spec: pipe SSRCs must be distinct"));
    }
    if let Some(id) = spec.mid_ext_id {
        if id == 0 || id > 14 {
            return Err(invalid(format!("consumer spec: mid_ext_id {id} not in 1..14")));
        }
    }
    if let Some(id) = spec.tcc_ext_id {
        if id == 0 || id > 14 || spec.mid_ext_id == Some(id) {
            return Err(invalid(format!("consumer spec: tcc_ext_id {id} not in 1..14 or equal to mid_ext_id")));
        }
    }
    Ok(())
}

/// The kind of consumer a spec makes: a pipe (one stream per producer encoding, `pipe_ssrcs`),
/// an SVC filter (one video stream with `svc`), simulcast (several encodings, starting on
/// `encoding`), or simple.
fn consumer_kind(spec: &ConsumerSpec, video: bool, encodings: usize, encoding: usize, rng: &mut Rng, now: Instant) -> Result<Kind> {
    if !spec.pipe_ssrcs.is_empty() && spec.pipe_ssrcs.len() != encodings {
        return Err(invalid(format!("consumer spec: {} pipe SSRCs for {encodings} encodings", spec.pipe_ssrcs.len())));
    }
    Ok(if !spec.pipe_ssrcs.is_empty() {
        let streams = spec
            .pipe_ssrcs
            .iter()
            .map(|&(ssrc, rtx_ssrc)| PipeStream { ssrc, rtx_ssrc, rtx_seq: rng.initial_seq(), tx: SendStats::default() })
            .collect();
        Kind::Pipe(Box::new(Pipe { streams }))
    } else if let (Some((spatial, temporal, ksvc)), true) = (spec.svc, video && encodings == 1) {
        Kind::Svc(Box::new(SvcFilter::new(spatial, temporal, ksvc, now)))
    } else if encodings > 1 {
        Kind::Simulcast(Simulcast {
            target: encoding,
            preferred_spatial: encoding,
            layers: LayerState::new(now),
            layer_switches: 0,
            ts: TsOffset::new(),
            ts_source: encoding,
            ts_prev: (encoding, 0),
        })
    } else {
        Kind::Simple
    })
}

impl Consumer {
    /// A consumer on `transport` of `producer` (`video`, with `encodings` streams), from its
    /// spec; the caller checked the handles, the encoding index and the SSRCs in use.
    pub(super) fn new(
        spec: &ConsumerSpec,
        transport: Handle,
        producer: Handle,
        video: bool,
        encodings: usize,
        rng: &mut Rng,
        now: Instant,
    ) -> Result<Consumer> {
        check(spec)?;
        let (pt, rtx_pt) = payload_types(spec)?;
        // A simulcast consumer starts on the highest layer (mediasoup's default preference).
        let encoding = if encodings > 1 { encodings - 1 } else { spec.encoding };
        let initial = rng.initial_seq();
        let quality = ConsumerQuality {
            seq_map: (video && spec.nack).then(|| SeqMap::new(now)),
            tx: SendStats::default(),
            rtx_pt,
            rtx_seq: rng.initial_seq(),
            nack: spec.nack,
            cname: spec.cname.as_deref().unwrap_or("pysfu").as_bytes().iter().copied().take(255).collect(),
            nacks_in: 0,
            nack_seqs_in: 0,
            plis_in: 0,
            firs_in: 0,
            rate: BitrateSampler::default(),
            budget: RetransmitBudget::new(now),
            nack_budget_drops: 0,
            nack_max_resend_drops: 0,
        };
        let kind = consumer_kind(spec, video, encodings, encoding, rng, now)?;
        Ok(Consumer {
            transport,
            producer,
            ssrc: spec.ssrc,
            rtx_ssrc: spec.rtx_ssrc,
            mid: spec.mid.as_ref().map(|m| m.as_bytes().to_vec()),
            mid_ext_id: if spec.mid.is_some() { spec.mid_ext_id } else { None },
            tcc_ext_id: if spec.pipe_ssrcs.is_empty() { spec.tcc_ext_id } else { None },
            pt,
            paused: spec.paused,
            encoding: if spec.pipe_ssrcs.is_empty() { encoding } else { 0 },
            last_out: None,
            seq: SeqManager::new(initial),
            // A pipe forwards from any packet: the far router's consumers wait for key frames.
            wait_key_frame: video && spec.pipe_ssrcs.is_empty(),
            stats: Counters::default(),
            dropped: 0,
            key_frame_requests_in: 0,
            quality,
            kind,
            preferred_temporal: vp8::ALL_LAYERS,
            vp8: None,
            preferred_svc_spatial: svc_dd::ALL,
            dd: None,
        })
    }

    /// The consumer's MID header extension (id, value), when it has one.
    #[inline]
    pub(super) fn mid_ext(&self) -> Option<(u8, &[u8])> {
        self.mid_ext_id.zip(self.mid.as_deref())
    }

    /// The stream the consumer moves to at its next key frame (its stream when settled).
    pub(super) fn target(&self) -> usize {
        match &self.kind {
            Kind::Simple | Kind::Pipe(_) | Kind::Svc(_) => self.encoding,
            Kind::Simulcast(s) => s.target,
        }
    }

    pub(super) fn preferred_spatial(&self) -> usize {
        match &self.kind {
            Kind::Simple | Kind::Pipe(_) => self.encoding,
            Kind::Svc(f) => f.preferred().spatial as usize,
            Kind::Simulcast(s) => s.preferred_spatial,
        }
    }

    pub(super) fn layer_switches(&self) -> u64 {
        match &self.kind {
            Kind::Simple => self.dd.as_ref().map_or(0, |f| f.switches),
            Kind::Pipe(_) => 0,
            Kind::Svc(f) => f.spatial_switches,
            Kind::Simulcast(s) => s.layer_switches,
        }
    }

    /// Output timestamp minus input timestamp of the stream being forwarded.
    pub(super) fn ts_offset(&self) -> u32 {
        match &self.kind {
            Kind::Simple | Kind::Pipe(_) | Kind::Svc(_) => 0,
            Kind::Simulcast(s) => s.ts.offset(),
        }
    }

    /// The timestamp offset packets of `stream` were sent with, while it is still known
    /// (the current stream and the one before the last switch).
    pub(super) fn ts_offset_of(&self, stream: usize) -> Option<u32> {
        match &self.kind {
            Kind::Simple | Kind::Svc(_) => (stream == self.encoding).then_some(0),
            Kind::Pipe(_) => Some(0),
            Kind::Simulcast(s) => match stream {
                x if x == s.ts_source => Some(s.ts.offset()),
                x if x == s.ts_prev.0 => Some(s.ts_prev.1),
                _ => None,
            },
        }
    }

    /// The consumer (re)starts: it waits for a key frame of its target stream.
    pub(super) fn restart(&mut self) {
        if self.is_pipe() {
            return;
        }
        self.wait_key_frame = true;
        self.encoding = self.target();
        if let Kind::Svc(f) = &mut self.kind {
            f.restart();
        }
    }

    #[inline]
    pub(super) fn is_pipe(&self) -> bool {
        matches!(self.kind, Kind::Pipe(_))
    }

    /// The producer stream that consumer SSRC `ssrc` carries (a pipe has one per stream).
    pub(super) fn stream_of_ssrc(&self, ssrc: u32) -> usize {
        match &self.kind {
            Kind::Pipe(p) => p.streams.iter().position(|s| s.ssrc == ssrc || s.rtx_ssrc == Some(ssrc)).unwrap_or(0),
            _ => self.encoding,
        }
    }

    /// The pipe stream whose media SSRC is `ssrc`, if this is a pipe consumer.
    pub(super) fn pipe_stream(&self, ssrc: u32) -> Option<usize> {
        match &self.kind {
            Kind::Pipe(p) => p.streams.iter().position(|s| s.ssrc == ssrc),
            _ => None,
        }
    }

    /// The consumer still needs a key frame of stream `i` (it waits for one or switches to it).
    pub(super) fn wants_key_frame_of(&self, i: usize) -> bool {
        let target = self.target();
        let svc = matches!(&self.kind, Kind::Svc(f) if f.needs_key_frame()) || self.dd.as_ref().is_some_and(|f| f.needs_key_frame());
        !self.paused && ((self.encoding == i && (self.wait_key_frame || svc)) || (target == i && self.encoding != i))
    }

    /// A packet of stream `stream` that is not forwarded to anyone (padding): the consumers of
    /// that stream skip its sequence number.
    #[inline]
    pub(super) fn skip(&mut self, stream: usize, seq_in: u16) {
        if self.encoding == stream {
            self.seq.drop(seq_in);
        }
    }

    /// Forward producer packet `pkt`: this consumer's copy (its SSRC, payload type, sequence
    /// number, timestamp and MID) protected with its transport's keys and queued to its
    /// sending tuple. The length queued, if any.
    #[inline]
    /// Ask the cache for this record and the sequence map entry of its next packet
    /// (`prefetch.rs`; `Router::warm_part`).
    pub(super) fn prefetch(&self) {
        crate::prefetch::prefetch(self);
        if let (Some(m), Some(out)) = (self.quality.seq_map.as_ref(), self.seq.max_output()) {
            m.prefetch(out.wrapping_add(1));
        }
    }

    pub(super) fn forward(&mut self, pkt: &Ingress<'_>, cx: &mut Fanout<'_>, now: Instant) -> Option<usize> {
        if let Kind::Pipe(_) = self.kind {
            return self.forward_pipe(pkt, cx, now);
        }
        let mut switching = self.select(pkt)?;
        let seq_in = pkt.hdr.sequence;
        if self.paused {
            self.seq.drop(seq_in);
            return None;
        }
        let ct = cx.transports.get_mut(&self.transport)?;
        let dest = ct.media_dest();
        let (Some(tx), Some(dest)) = (ct.tx.as_mut(), dest) else {
            self.dropped += 1;
            return None;
        };
        let cpt = self.admit(pkt, &mut switching)?;
        // The codec's layer filter: what it drops, and what it changes in what it forwards
        // (VP8 temporal layers, VP9 SVC layers, AV1 and H264 decode targets by the
        // dependency descriptor; ingress reads it only for the codecs svc_dd.rs names).
        let rewrite = match (pkt.codec, pkt.dd.as_ref()) {
            (Codec::Vp8, _) if self.filters_vp8() => self.vp8_admit(pkt, switching)?.map_or(Rewrite::None, Rewrite::Vp8),
            (Codec::Vp9, _) if matches!(self.kind, Kind::Svc(_)) => self.svc_admit(pkt, switching, now, ct.bwe.estimate(now), &mut cx.key_frame_wanted)?,
            (_, Some(dd)) => self.dd_admit(dd, pkt.hdr, switching, now, ct.bwe.estimate(now), &mut cx.key_frame_wanted)?,
            _ => Rewrite::None,
        };
        if switching {
            self.sync(pkt, now);
        }
        let Some(seq_out) = self.seq.input(seq_in) else {
            self.dropped += 1;
            return None;
        };
        let ts_out = match &mut self.kind {
            Kind::Simple | Kind::Pipe(_) | Kind::Svc(_) => pkt.hdr.timestamp,
            Kind::Simulcast(s) => s.ts.apply(pkt.hdr.timestamp),
        };
        let mut buf = cx.out.take_buf();
        let tcc = self.tcc_ext_id.map(|id| (id, ct.bwe.stamping(now).next_seq()));
        let egress = Egress { seq: seq_out, timestamp: ts_out, ssrc: self.ssrc, pt: cpt, tcc };
        if write_egress(&mut buf, pkt.data, pkt.hdr, &|id| pkt.map_ext(id), self.mid_ext(), egress).is_err() {
            cx.drops.inc(DropReason::RtpMalformed);
            cx.out.give_back(buf);
            return None;
        }
        match rewrite {
            Rewrite::Vp8((d, pic, tl0)) => rewrite_vp8(&mut buf, pkt.hdr, &d, pic, tl0),
            Rewrite::Marker => set_marker(&mut buf),
            Rewrite::None => {}
        }
        self.last_out = Some(now);
        let Ok(seal) = tx.protect_rtp(&mut buf) else {
            cx.drops.inc(DropReason::ProtectFailed);
            cx.out.give_back(buf);
            return None;
        };
        let len = tx.wire_len(buf.len(), seal);
        self.stats.tx(len);
        ct.stats.tx(len);
        if let Some((_, seq)) = tcc {
            ct.bwe.stamping(now).on_sent(now, seq, len);
        }
        if !ct.media_sent {
            ct.media_sent = true;
            cx.first_media.push((self.transport, dest));
        }
        if let Some(m) = self.quality.seq_map.as_mut() {
            m.record(seq_out, seq_in, pkt.encoding as u8);
        }
        self.quality.tx.on_sent(now, ts_out, pkt.hdr.payload_len);
        cx.out.push_sealed(dest, buf, seal);
        Some(len)
    }

    /// A pipe consumer's copy: the stream's own SSRC, the router's payload type and header
    /// extension ids, sequence number and timestamp unchanged.
    fn forward_pipe(&mut self, pkt: &Ingress<'_>, cx: &mut Fanout<'_>, now: Instant) -> Option<usize> {
        if self.paused {
            return None;
        }
        let Kind::Pipe(pipe) = &mut self.kind else { return None };
        let s = pipe.streams.get_mut(pkt.encoding)?;
        let cpt = self.pt[pkt.router_pt as usize];
        if cpt == 0xff {
            self.dropped += 1;
            return None;
        }
        let ct = cx.transports.get_mut(&self.transport)?;
        let dest = ct.media_dest();
        let (Some(tx), Some(dest)) = (ct.tx.as_mut(), dest) else {
            self.dropped += 1;
            return None;
        };
        let mut buf = cx.out.take_buf();
        let egress = Egress { seq: pkt.hdr.sequence, timestamp: pkt.hdr.timestamp, ssrc: s.ssrc, pt: cpt, tcc: None };
        if write_egress(&mut buf, pkt.data, pkt.hdr, &|id| pkt.map_ext(id), None, egress).is_err() {
            cx.drops.inc(DropReason::RtpMalformed);
            cx.out.give_back(buf);
            return None;
        }
        let Ok(seal) = tx.protect_rtp(&mut buf) else {
            cx.drops.inc(DropReason::ProtectFailed);
            cx.out.give_back(buf);
            return None;
        };
        let len = tx.wire_len(buf.len(), seal);
        self.last_out = Some(now);
        self.stats.tx(len);
        ct.stats.tx(len);
        s.tx.on_sent(now, pkt.hdr.timestamp, pkt.hdr.payload_len);
        self.quality.tx.on_sent(now, pkt.hdr.timestamp, pkt.hdr.payload_len);
        cx.out.push_sealed(dest, buf, seal);
        Some(len)
    }

    /// Whether a packet of stream `pkt.encoding` is for this consumer (None: not); if so,
    /// whether the consumer switches to that stream with it.
    #[inline]
    fn select(&mut self, pkt: &Ingress<'_>) -> Option<bool> {
        if self.encoding == pkt.encoding {
            return Some(false);
        }
        match &self.kind {
            Kind::Simple | Kind::Pipe(_) | Kind::Svc(_) => None,
            // Simulcast: move to the target stream only at one of its key frames.
            Kind::Simulcast(s) => {
                if s.target != pkt.encoding || !pkt.key_frame || self.paused {
                    return None;
                }
                self.encoding = pkt.encoding;
                Some(true)
            }
        }
    }

    /// The consumer's payload type for the packet, if it takes it: negotiated, and a key frame
    /// when the consumer waits for one (which starts it: `switching`).
    #[inline]
    fn admit(&mut self, pkt: &Ingress<'_>, switching: &mut bool) -> Option<u8> {
        let cpt = self.pt[pkt.router_pt as usize];
        if cpt == 0xff {
            self.dropped += 1;
            self.seq.drop(pkt.hdr.sequence);
            return None;
        }
        if self.wait_key_frame {
            if pkt.has_key_frames && !pkt.key_frame {
                self.dropped += 1;
                self.seq.drop(pkt.hdr.sequence);
                return None;
            }
            // A key frame, or no key frame detection for this codec: start right away.
            self.wait_key_frame = false;
            *switching = true;
        }
        Some(cpt)
    }

    /// Whether VP8 packets go through the temporal layer filter: a simulcast consumer's
    /// always (PictureID continuity across switches), a simple consumer's from the first
    /// time its viewer asks for fewer temporal layers (until then its packets go out as the
    /// producer sent them, at no cost).
    #[inline]
    fn filters_vp8(&self) -> bool {
        self.vp8.is_some() || self.preferred_temporal != vp8::ALL_LAYERS || matches!(self.kind, Kind::Simulcast(_))
    }

    /// VP8 temporal layer selection of a packet the consumer otherwise takes: None when the
    /// filter drops it (its sequence number skipped); else the descriptor and the PictureID
    /// and TL0PICIDX to write, if it has any of them. A payload without a valid descriptor
    /// is forwarded as it is.
    #[inline]
    fn vp8_admit(&mut self, pkt: &Ingress<'_>, switching: bool) -> Option<Option<Vp8Rewrite>> {
        let payload = pkt.hdr.payload(pkt.data);
        // No extension octet: no PictureID, TL0PICIDX or TID; nothing to select or rewrite.
        if payload.first().is_none_or(|b| b & 0x80 == 0) {
            return Some(None);
        }
        let Ok(d) = vp8::parse(payload) else { return Some(None) };
        let target = self.preferred_temporal;
        let f = self.vp8.get_or_insert_with(|| {
            let mut f = Box::new(TemporalFilter::new());
            f.set_target(target);
            f
        });
        if switching {
            f.sync();
        }
        if !f.admit(&d, pkt.hdr.timestamp, pkt.key_frame) {
            self.seq.drop(pkt.hdr.sequence);
            return None;
        }
        let (pic, tl0) = f.map(&d);
        if d.picture_id.is_some() && pic.is_none() {
            // A late packet from before the last switch: its PictureID has no place.
            self.dropped += 1;
            self.seq.drop(pkt.hdr.sequence);
            return None;
        }
        Some(Some((d, pic, tl0)))
    }

    /// The VP8 PictureID and TL0PICIDX a retransmitted packet was sent with (None: that
    /// mapping is gone; the packet is not resent). Packets of other codecs: unchanged.
    pub(super) fn vp8_again(&self, codec: Codec, payload: &[u8]) -> Option<Option<Vp8Rewrite>> {
        let Some(f) = self.vp8.as_ref().filter(|_| codec == Codec::Vp8) else { return Some(None) };
        let Ok(d) = vp8::parse(payload) else { return Some(None) };
        let (pic, tl0) = f.map_again(&d)?;
        Some(Some((d, pic, tl0)))
    }

    /// Output continues right after the last packet sent, in sequence and in time (the
    /// wall-clock gap since then, at 90 kHz), whichever stream it was.
    fn sync(&mut self, pkt: &Ingress<'_>, now: Instant) {
        self.seq.sync(pkt.hdr.sequence);
        let Kind::Simulcast(s) = &mut self.kind else { return };
        if s.ts_source != self.encoding {
            let gap = self.last_out.map_or(1, |t| (now.saturating_duration_since(t).as_millis() as u32).saturating_mul(90).max(1));
            // Another stream's timestamps (simulcast): continue after the last one.
            s.ts_prev = (s.ts_source, s.ts.offset());
            s.ts.sync_after_last(pkt.hdr.timestamp, gap);
            s.ts_source = self.encoding;
            s.layer_switches += 1;
        }
    }
}

/// Set the RTP marker bit of packet `buf`.
#[inline]
pub(super) fn set_marker(buf: &mut [u8]) {
    if let Some(b) = buf.get_mut(1) {
        *b |= 0x80;
    }
}

/// Write the VP8 PictureID and TL0PICIDX into the consumer's copy `buf` of a packet with
/// header `hdr` (the payload keeps its length and sits at the end, before any padding).
pub(super) fn rewrite_vp8(buf: &mut [u8], hdr: &crate::rtp::RtpHeader, d: &vp8::Descriptor, pic: Option<u16>, tl0: Option<u8>) {
    let start = buf.len().saturating_sub(hdr.padding_len + hdr.payload_len);
    if let Some(payload) = buf.get_mut(start..) {
        vp8::rewrite(payload, d, pic, tl0);
    }
}
