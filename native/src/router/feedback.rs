//! Feedback: RTCP from peers (viewers' NACKs, key frame requests, receiver reports and REMB;
//! producers' sender reports), NACKs answered from the retransmission buffers within each
//! consumer's budget, key frame requests and NACKs of our own toward producers.

use crate::remote::Remote;
use std::time::{Duration, Instant};

use crate::budget::NACK_MAX_RESENDS;
use crate::bwe::BandwidthEstimator;
use crate::nack::Resend;
use crate::rtcp;
use crate::rtp;

use super::consumer::{rewrite_vp8, set_marker, Consumer, ConsumerQuality, Kind};
use super::egress::{push_rtcp, write_egress, Egress};
use super::output::{srtp_drop, DropReason, Drops, Output};
use super::seal::TxSrtp;
use super::producer::{Producer, PtInfo};
use super::spec::KeyFrameMethod;
use super::transport::{Counters, Transport};
use super::{earliest, Handle, Router, KEY_FRAME_INTERVAL};

/// Caps on what one compound RTCP packet may ask for.
const MAX_NACK_SEQS: usize = 1024;
const MAX_RTCP_ITEMS: usize = 64;
/// Key frame requests acted on per compound packet.
const MAX_KEY_FRAME_REQUESTS: usize = 16;
/// Spacing of resends of the same packet to a viewer when its RTT is unknown.
const RESEND_INTERVAL: Duration = Duration::from_millis(100);
/// What a retransmission may add to the buffered packet (RTX header, the consumer's MID,
/// SRTP tag), so the budget check before building it is not short.
const RETRANSMIT_OVERHEAD: usize = 40;

/// kept between packets).
#[derive(Default)]
pub(super) struct RtcpWork {
    /// (media SSRC, sequence number) of NACKed packets.
    nack_seqs: Vec<(u32, u16)>,
    /// Media SSRC of each NACK message.
    nacks: Vec<u32>,
    blocks: Vec<rtcp::ReportBlock>,
    /// (SSRC, NTP, RTP timestamp) of sender reports.
    srs: Vec<(u32, u64, u32)>,
    /// (SSRC, is FIR) of key frame requests.
    key_frames: Vec<(u32, bool)>,
}

impl RtcpWork {
    fn clear(&mut self) {
        self.nack_seqs.clear();
        self.nacks.clear();
        self.blocks.clear();
        self.srs.clear();
        self.key_frames.clear();
    }

    fn add_blocks(&mut self, blocks: rtcp::ReportBlocks<'_>) {
        for b in blocks {
            if self.blocks.len() >= MAX_RTCP_ITEMS {
                break;
            }
            self.blocks.push(b);
        }
    }

    fn key_frame(&mut self, ssrc: u32, fir: bool) {
        if self.key_frames.len() < MAX_RTCP_ITEMS {
            self.key_frames.push((ssrc, fir));
        }
    }
}

/// Media SSRCs a compound packet asked key frames for (PLI, FIR), in order.
#[derive(Default)]
struct KeyFramesWanted {
    ssrcs: [u32; MAX_KEY_FRAME_REQUESTS],
    n: usize,
}

impl KeyFramesWanted {
    fn push(&mut self, ssrc: u32) {
        if self.n < self.ssrcs.len() {
            self.ssrcs[self.n] = ssrc;
            self.n += 1;
        }
    }
}

impl RtcpWork {
    /// Copy the items of compound packet `pkt` (already unprotected) out; REMB goes straight
    /// to the transport's estimate.
    fn collect(&mut self, now: Instant, pkt: &[u8], bwe: &mut BandwidthEstimator, wanted: &mut KeyFramesWanted, drops: &mut Drops) {
        self.clear();
        for item in rtcp::compound(pkt) {
            match item {
                Ok(rtcp::Packet::Sr(sr)) => {
                    if self.srs.len() < MAX_RTCP_ITEMS {
                        self.srs.push((sr.info.ssrc, sr.info.ntp, sr.info.rtp_timestamp));
                    }
                    self.add_blocks(sr.report_blocks());
                }
                Ok(rtcp::Packet::Rr(rr)) => self.add_blocks(rr.report_blocks()),
                Ok(rtcp::Packet::Nack(n)) => {
                    if self.nacks.len() < MAX_RTCP_ITEMS {
                        self.nacks.push(n.media_ssrc);
                    }
                    for seq in n.seqs() {
                        if self.nack_seqs.len() >= MAX_NACK_SEQS {
                            // More than one compound may ask for (bounds the answer burst).
                            drops.inc(DropReason::NackTruncated);
                            continue;
                        }
                        self.nack_seqs.push((n.media_ssrc, seq));
                    }
                }
                Ok(rtcp::Packet::Pli(pli)) => {
                    self.key_frame(pli.media_ssrc, false);
                    wanted.push(pli.media_ssrc);
                }
                Ok(rtcp::Packet::Fir(fir)) => {
                    for ssrc in fir.ssrcs() {
                        self.key_frame(ssrc, true);
                        wanted.push(ssrc);
                    }
                }
                Ok(rtcp::Packet::Remb(remb)) => bwe.on_remb(now, remb.bitrate),
                // The viewer's transport-wide feedback on what we stamped (bwe/send_side.rs).
                Ok(rtcp::Packet::TransportCc(tcc)) if bwe.send_side.is_some() => {
                    bwe.on_transport_cc(now, tcc.fci);
                }
                Ok(_) => drops.inc(DropReason::RtcpIgnored),
                Err(_) => {
                    drops.inc(DropReason::RtcpMalformed);
                    break;
                }
            }
        }
    }
}

impl Router {
    pub(super) fn on_rtcp(&mut self, now: Instant, from: Remote, data: &[u8], out: &mut Output) {
        let Some(&th) = self.by_addr.get(&from) else {
            self.drops.inc(DropReason::UnknownSource);
            return;
        };
        self.on_rtcp_of(now, th, from, data, out);
    }

    /// An RTCP compound packet for transport `th` (found by its tuple, or by its socket).
    pub(super) fn on_rtcp_of(&mut self, now: Instant, th: Handle, from: Remote, data: &[u8], out: &mut Output) {
        let Router { transports, drops, scratch, rtcp_work: work, connect_pending, .. } = self;
        let Some(t) = transports.get_mut(&th) else { return };
        t.stats.rx(data.len());
        t.rtcp_in += 1;
        let Some(rx) = t.rx.as_mut() else {
            drops.inc(DropReason::NoSrtp);
            return;
        };
        scratch.clear();
        scratch.extend_from_slice(data);
        if let Err(e) = rx.unprotect_rtcp(scratch) {
            drops.inc(srtp_drop(e, true));
            return;
        }
        if t.authenticated_from(from) {
            *connect_pending = Some(th);
        }
        let mut wanted = KeyFramesWanted::default();
        work.collect(now, scratch, &mut t.bwe, &mut wanted, drops);
        for &ssrc in &wanted.ssrcs[..wanted.n] {
            self.viewer_wants_key_frame(now, th, ssrc, out);
        }
        self.on_rtcp_quality(now, th, out);
    }

    /// A viewer on transport `th` asked for a key frame of its stream `ssrc`: ask the producer.
    fn viewer_wants_key_frame(&mut self, now: Instant, th: Handle, ssrc: u32, out: &mut Output) {
        let t = &self.transports[&th];
        let Some(&ch) = t.consumer_ssrc.get(&ssrc) else {
            self.drops.inc(DropReason::RtcpUnknownSsrc);
            return;
        };
        let Some(c) = self.consumers.get_mut(&ch) else { return };
        c.key_frame_requests_in += 1;
        let (ph, enc) = (c.producer, c.stream_of_ssrc(ssrc));
        if !c.paused {
            self.request_key_frame(now, ph, enc, out);
        }
    }

    /// Ask producer `ph`'s stream `enc` for a key frame: PLI or FIR (as negotiated) with the
    /// stream's original SSRC, at most one outstanding request per second.
    pub(super) fn request_key_frame(&mut self, now: Instant, ph: Handle, enc: usize, out: &mut Output) {
        let Router { transports, producers, drops, .. } = self;
        let Some(p) = producers.get_mut(&ph) else { return };
        let Some(method) = p.key_frame_request.clone() else { return };
        let Some(e) = p.encodings.get_mut(enc) else { return };
        let Some(ssrc) = e.media_ssrc else {
            // Not seen yet: ask as soon as the stream's SSRC is known.
            e.kf.wanted = true;
            return;
        };
        if let Some(since) = e.kf.outstanding_since {
            if now.duration_since(since) < KEY_FRAME_INTERVAL {
                e.kf.wanted = true;
                return;
            }
        }
        let Some(t) = transports.get_mut(&p.transport) else { return };
        let dest = t.rtcp_feedback_dest();
        let (Some(tx), Some(dest)) = (t.tx.as_mut(), dest) else {
            e.kf.wanted = true;
            drops.inc(DropReason::KeyFrameNoRoute);
            return;
        };
        let mut buf = out.take_buf();
        match method {
            KeyFrameMethod::Pli => {
                e.quality.plis_sent += 1;
                rtcp::build_pli(&mut buf, ssrc, ssrc)
            }
            KeyFrameMethod::Fir => {
                e.quality.firs_sent += 1;
                e.kf.fir_seq = e.kf.fir_seq.wrapping_add(1);
                rtcp::build_fir(&mut buf, ssrc, &[(ssrc, e.kf.fir_seq)])
            }
        }
        if !push_rtcp(tx, &mut t.stats, &mut t.rtcp_out, drops, out, dest, buf) {
            return;
        }
        e.kf.outstanding_since = Some(now);
        e.kf.wanted = false;
        e.kf.requests_sent += 1;
        let deadline = now + KEY_FRAME_INTERVAL;
        self.wake_at(deadline);
    }

    /// The loss-repair and report items of a compound RTCP packet from transport `th`:
    /// producers' SRs, viewers' report blocks and NACKs (collected by `on_rtcp`).
    fn on_rtcp_quality(&mut self, now: Instant, th: Handle, out: &mut Output) {
        let work = std::mem::take(&mut self.rtcp_work);
        if let Some(t) = self.transports.get(&th) {
            for &(ssrc, ntp, rtp_ts) in &work.srs {
                let enc = match t.ssrc_in.get(&ssrc) {
                    Some(r) if !r.rtx => self.producers.get_mut(&r.producer).and_then(|p| p.encodings.get_mut(r.encoding)),
                    _ => None,
                };
                match enc {
                    Some(e) => e.quality.rx.on_sender_report(now, ntp, rtp_ts),
                    None => self.drops.inc(DropReason::RtcpUnknownSsrc),
                }
            }
            // Blocks about a consumer's media SSRC; RTX and unknown SSRCs (the probator's
            // 1234) are ignored.
            for b in &work.blocks {
                if let Some(c) = t.consumer_ssrc.get(&b.ssrc).and_then(|h| self.consumers.get_mut(h)) {
                    if c.ssrc == b.ssrc {
                        c.quality.tx.on_report_block(now, b);
                    }
                }
            }
            for &ssrc in &work.nacks {
                if let Some(c) = t.consumer_ssrc.get(&ssrc).and_then(|h| self.consumers.get_mut(h)) {
                    c.quality.nacks_in += 1;
                }
            }
            for &(ssrc, fir) in &work.key_frames {
                if let Some(c) = t.consumer_ssrc.get(&ssrc).and_then(|h| self.consumers.get_mut(h)) {
                    if fir {
                        c.quality.firs_in += 1;
                    } else {
                        c.quality.plis_in += 1;
                    }
                }
            }
        }
        for &(ssrc, seq) in &work.nack_seqs {
            self.answer_nack(now, th, ssrc, seq, out);
        }
        self.rtcp_work = work;
    }

    /// Resend output packet `seq_out` of the consumer with media SSRC `ssrc` on transport
    /// `th` from its producer stream's buffer: as RTX (the consumer's RTX SSRC, PT and
    /// sequence numbers, the original sequence number in front of the payload) when
    /// negotiated, else as the original packet again.
    fn answer_nack(&mut self, now: Instant, th: Handle, ssrc: u32, seq_out: u16, out: &mut Output) {
        let Router { transports, producers, consumers, drops, .. } = self;
        let Some(t) = transports.get_mut(&th) else { return };
        let Some(c) = t.consumer_ssrc.get(&ssrc).and_then(|h| consumers.get_mut(h)) else {
            drops.inc(DropReason::RtcpUnknownSsrc);
            return;
        };
        if let Some(stream) = c.pipe_stream(ssrc) {
            // A pipe's sequence numbers are the producer's: the stream's buffer has it as is.
            c.quality.nack_seqs_in += 1;
            let Some(p) = producers.get(&c.producer) else { return };
            let Some(pkt) = p.encodings.get(stream).and_then(|e| e.quality.buffer.as_ref()).and_then(|b| b.get(now, seq_out)) else {
                drops.inc(DropReason::NackNotBuffered);
                return;
            };
            if c.paused {
                drops.inc(DropReason::NackPaused);
                return;
            }
            c.retransmit_pipe(now, t, &Stored { producer: p, stream, pkt }, drops, out);
            return;
        }
        if c.ssrc != ssrc {
            drops.inc(DropReason::RtcpUnknownSsrc);
            return;
        }
        let q = &mut c.quality;
        q.nack_seqs_in += 1;
        let Some(map) = q.seq_map.as_mut().filter(|_| q.nack) else {
            drops.inc(DropReason::NackNotNegotiated);
            return;
        };
        let Some((stream, seq_in)) = map.lookup(seq_out) else {
            drops.inc(DropReason::NackNotBuffered);
            return;
        };
        let Some(p) = producers.get(&c.producer) else { return };
        let Some(e) = p.encodings.get(stream as usize) else { return };
        let Some(pkt) = e.quality.buffer.as_ref().and_then(|b| b.get(now, seq_in)) else {
            drops.inc(DropReason::NackNotBuffered);
            return;
        };
        if c.paused {
            drops.inc(DropReason::NackPaused);
            return;
        }
        if c.may_resend(now, seq_out, pkt.len(), drops) {
            c.retransmit(now, t, &Stored { producer: p, stream: stream as usize, pkt }, seq_out, drops, out);
        }
    }

    /// NACK the producer stream's due gaps (if any) and note when to look again.
    pub(super) fn send_upstream_nacks(&mut self, now: Instant, ph: Handle, enc: usize, out: &mut Output) {
        let Router { transports, producers, drops, next_timeout, .. } = self;
        let Some(p) = producers.get_mut(&ph) else { return };
        let Some(e) = p.encodings.get_mut(enc) else { return };
        let (Some(ssrc), Some(g)) = (e.media_ssrc, e.quality.nack.as_mut()) else { return };
        let Some(t) = transports.get_mut(&p.transport) else { return };
        let dest = t.rtcp_feedback_dest();
        let seqs = g.collect(now);
        if let (false, Some(tx), Some(dest)) = (seqs.is_empty(), t.tx.as_mut(), dest) {
            let mut buf = out.take_buf();
            rtcp::build_nack(&mut buf, t.rtcp_ssrc, ssrc, seqs);
            if let Ok(seal) = tx.protect_rtcp(&mut buf) {
                t.stats.tx(tx.wire_len(buf.len(), seal));
                t.rtcp_out += 1;
                e.quality.nacks_sent += 1;
                out.push_sealed(dest, buf, seal);
            } else {
                drops.inc(DropReason::ProtectFailed);
                out.give_back(buf);
            }
        }
        if let Some(d) = g.next_due() {
            earliest(next_timeout, d);
        }
    }

}

/// A packet from a producer stream's retransmission buffer.
struct Stored<'a> {
    producer: &'a Producer,
    stream: usize,
    pkt: &'a [u8],
}

impl Consumer {
    /// Whether a viewer's NACK of `seq_out` (a stored packet of `len` bytes) may be answered
    /// now: once per RTT (or 100 ms while unknown) per packet, since a repeated NACK inside
    /// that time is already answered by the retransmission in flight; at most
    /// NACK_MAX_RESENDS times per packet; within the consumer's retransmission budget.
    fn may_resend(&mut self, now: Instant, seq_out: u16, len: usize, drops: &mut Drops) -> bool {
        let q = &mut self.quality;
        let Some(map) = q.seq_map.as_mut() else { return false };
        let min_interval = q.tx.rtt.map_or(RESEND_INTERVAL, |r| r.clamp(Duration::from_millis(5), RESEND_INTERVAL));
        match map.check_resend(now, seq_out, min_interval, NACK_MAX_RESENDS) {
            Resend::Allowed => {}
            Resend::Throttled | Resend::Unknown => {
                drops.inc(DropReason::NackThrottled);
                return false;
            }
            Resend::MaxResends => {
                q.nack_max_resend_drops += 1;
                drops.inc(DropReason::NackMaxResends);
                return false;
            }
        }
        q.budget.refill(now, self.stats.bytes_out, q.rate.bps);
        if !q.budget.allows(len + RETRANSMIT_OVERHEAD) {
            q.nack_budget_drops += 1;
            drops.inc(DropReason::NackBudget);
            return false;
        }
        map.mark_resent(now, seq_out);
        true
    }

    /// Send stored packet `s` again as output packet `seq_out`, in this consumer's numbering
    /// and timestamps, as RTX when negotiated.
    fn retransmit(&mut self, now: Instant, t: &mut Transport, s: &Stored<'_>, seq_out: u16, drops: &mut Drops, out: &mut Output) {
        let p = s.producer;
        let Ok(hdr) = rtp::parse(s.pkt) else { return };
        let PtInfo::Media(ci) = p.pt[(hdr.payload_type & 0x7f) as usize] else { return };
        let cpt = self.pt[p.codecs[ci].mapped_pt as usize];
        if cpt == 0xff {
            drops.inc(DropReason::NackNotBuffered);
            return;
        }
        let dest = t.media_dest();
        let (Some(tx), Some(dest)) = (t.tx.as_mut(), dest) else { return };
        // In the consumer's timestamps (simulcast offset of the packet's stream).
        let Some(ts_offset) = self.ts_offset_of(s.stream) else {
            // From two or more switches ago: its timestamp mapping is gone.
            drops.inc(DropReason::NackNotBuffered);
            return;
        };
        // VP8: the PictureID / TL0PICIDX it was first sent with.
        let Some(vp8) = self.vp8_again(p.codecs[ci].codec, hdr.payload(s.pkt)) else {
            drops.inc(DropReason::NackNotBuffered);
            return;
        };
        let mut buf = out.take_buf();
        let tcc = self.tcc_ext_id.map(|id| (id, t.bwe.stamping(now).next_seq()));
        let egress = Egress { seq: seq_out, timestamp: hdr.timestamp.wrapping_add(ts_offset), ssrc: self.ssrc, pt: cpt, tcc };
        if write_egress(&mut buf, s.pkt, &hdr, &|id| p.map_ext(id), self.mid_ext(), egress).is_err() {
            drops.inc(DropReason::RtpMalformed);
            out.give_back(buf);
            return;
        }
        if let Some((d, pic, tl0)) = vp8 {
            rewrite_vp8(&mut buf, &hdr, &d, pic, tl0);
        }
        if self.svc_marker_again(p.codecs[ci].codec, hdr.payload(s.pkt)) {
            set_marker(&mut buf);
        }
        let q = &mut self.quality;
        let rtx_pt = q.rtx_pt.iter().find(|(m, _)| *m == cpt).map(|(_, r)| *r);
        let rtx = self.rtx_ssrc.zip(rtx_pt);
        let mut rtx_seq = q.rtx_seq;
        let Some(buf) = as_rtx(buf, rtx, &mut rtx_seq, drops, out) else { return };
        q.rtx_seq = rtx_seq;
        let sent = send_retransmission(buf, tx, q, &mut t.stats, drops, out, dest);
        if let (Some(len), Some((_, seq))) = (sent, tcc) {
            t.bwe.stamping(now).on_sent(now, seq, len);
        }
    }

    /// A pipe stream's stored packet again, as RTX of that stream when it has an RTX SSRC
    /// and the codec an RTX payload type (else the packet itself), within the budget.
    fn retransmit_pipe(&mut self, now: Instant, t: &mut Transport, s: &Stored<'_>, drops: &mut Drops, out: &mut Output) {
        let p = s.producer;
        let Ok(hdr) = rtp::parse(s.pkt) else { return };
        let PtInfo::Media(ci) = p.pt[(hdr.payload_type & 0x7f) as usize] else { return };
        let cpt = self.pt[p.codecs[ci].mapped_pt as usize];
        if cpt == 0xff {
            drops.inc(DropReason::NackNotBuffered);
            return;
        }
        let q = &mut self.quality;
        q.budget.refill(now, self.stats.bytes_out, q.rate.bps);
        if !q.budget.allows(s.pkt.len() + RETRANSMIT_OVERHEAD) {
            q.nack_budget_drops += 1;
            drops.inc(DropReason::NackBudget);
            return;
        }
        let Kind::Pipe(pipe) = &mut self.kind else { return };
        let Some(ps) = pipe.streams.get_mut(s.stream) else { return };
        let dest = t.media_dest();
        let (Some(tx), Some(dest)) = (t.tx.as_mut(), dest) else { return };
        let mut buf = out.take_buf();
        let egress = Egress { seq: hdr.sequence, timestamp: hdr.timestamp, ssrc: ps.ssrc, pt: cpt, tcc: None };
        if write_egress(&mut buf, s.pkt, &hdr, &|id| p.map_ext(id), None, egress).is_err() {
            drops.inc(DropReason::RtpMalformed);
            out.give_back(buf);
            return;
        }
        let rtx_pt = q.rtx_pt.iter().find(|(m, _)| *m == cpt).map(|(_, r)| *r);
        let Some(buf) = as_rtx(buf, ps.rtx_ssrc.zip(rtx_pt), &mut ps.rtx_seq, drops, out) else { return };
        send_retransmission(buf, tx, q, &mut t.stats, drops, out, dest);
    }
}

/// `buf` wrapped as RTX (RFC 4588) with `rtx = (ssrc, payload type)` and the next of
/// `rtx_seq`, or as it is without RTX; None (buffers back in the pool, counted) if it cannot be.
fn as_rtx(buf: Vec<u8>, rtx: Option<(u32, u8)>, rtx_seq: &mut u16, drops: &mut Drops, out: &mut Output) -> Option<Vec<u8>> {
    let Some((rtx_ssrc, rtx_pt)) = rtx else { return Some(buf) };
    let mut wrapped = out.take_buf();
    if rtp::rtx_encode(&mut wrapped, &buf, rtx_pt, rtx_ssrc, *rtx_seq).is_err() {
        out.give_back(wrapped);
        out.give_back(buf);
        drops.inc(DropReason::RtpMalformed);
        return None;
    }
    *rtx_seq = rtx_seq.wrapping_add(1);
    out.give_back(buf);
    Some(wrapped)
}

/// Protect a retransmission and queue it to `dest`, spending the consumer's budget and
/// counting it (or count the failure and recycle the buffer). The length sent, if sent.
fn send_retransmission(
    mut buf: Vec<u8>,
    tx: &mut TxSrtp,
    q: &mut ConsumerQuality,
    stats: &mut Counters,
    drops: &mut Drops,
    out: &mut Output,
    dest: Remote,
) -> Option<usize> {
    let Ok(seal) = tx.protect_rtp(&mut buf) else {
        drops.inc(DropReason::ProtectFailed);
        out.give_back(buf);
        return None;
    };
    let len = tx.wire_len(buf.len(), seal);
    q.budget.spend(len);
    q.tx.rtx_packets += 1;
    q.tx.rtx_bytes += len as u64;
    stats.tx(len);
    out.push_sealed(dest, buf, seal);
    Some(len)
}
