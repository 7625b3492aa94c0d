//! Datagrams in: demultiplexing by first byte (RFC 7983), STUN (integrity checked) and DTLS
//! handed up to Python, SRTP unprotected once, producer streams learnt by SSRC, MID and RID,
//! RTX restored, loss and key frame bookkeeping; then the fan-out (egress.rs).

use crate::remote::Remote;
use std::time::Instant;

use crate::dd;
use crate::fasthash::HandleMap;
use crate::nack::Arrival;
use crate::rtp;
use crate::stun_check;
use crate::stun_peek;
use crate::twcc::TwccRecorder;

use super::egress::{DdFrame, Fanout, Ingress};
use super::share;
use super::output::{srtp_drop, DropReason, Drops, Output, UpKind};
use super::producer::{Producer, PtInfo, StreamQuality, StreamRef};
use super::svc_dd;
use super::transport::Transport;
use super::{earliest, Handle, Router};

impl Router {
    /// Process one received datagram (or one RFC 4571 frame of a TCP connection). True if it
    /// was a STUN Binding request that passed a known transport's integrity check (the TCP
    /// edge keeps a connection open only while it sends those).
    pub fn handle_datagram(&mut self, now: Instant, from: Remote, data: &[u8], out: &mut Output) -> bool {
        let Some(&b0) = data.first() else {
            self.drops.inc(DropReason::Demux);
            return false;
        };
        match b0 {
            0..=3 => return self.on_stun(now, from, data, out),
            20..=63 => self.on_dtls(from, data),
            128..=191 => {
                if data.len() >= 2 && (192..=223).contains(&data[1]) {
                    self.on_rtcp(now, from, data, out)
                } else {
                    self.on_rtp(now, from, data, out)
                }
                // The packet proved the transport's first sending tuple: media may flow.
                if let Some(h) = self.connect_pending.take() {
                    self.on_transport_connected(now, h, out);
                }
            }
            _ => self.drops.inc(DropReason::Demux),
        }
        false
    }

    /// A STUN message goes on only as a Binding request for a known transport (found by its
    /// USERNAME's local ufrag) with a valid MESSAGE-INTEGRITY (and FINGERPRINT, if present);
    /// everything else is dropped here, counted. What passes renews the transport's consent.
    /// A plain request from the selected tuple (a consent freshness check: it changes no ICE
    /// state) is answered here; the rest goes to Python's ICE.
    fn on_stun(&mut self, now: Instant, from: Remote, data: &[u8], out: &mut Output) -> bool {
        let h = match stun_peek::local_ufrag(data).and_then(|u| self.by_ufrag.get(u)) {
            Some(&h) => h,
            None => {
                // From a tuple of a transport: a request that failed that transport's check.
                match self.by_addr.get(&from).and_then(|h| self.transports.get_mut(h)) {
                    Some(t) => {
                        t.stats.rx(data.len());
                        t.stun_rejected += 1;
                        self.drops.inc(DropReason::StunIntegrity);
                    }
                    None => self.drops.inc(DropReason::StunUnknown),
                }
                return false;
            }
        };
        let Some(t) = self.transports.get_mut(&h) else {
            self.drops.inc(DropReason::StunUnknown);
            return false;
        };
        t.stats.rx(data.len());
        let Ok(checked) = stun_check::verify_request(data, &t.ice_key) else {
            t.stun_rejected += 1;
            self.drops.inc(DropReason::StunIntegrity);
            return false;
        };
        t.consent_at = Some(now);
        if self.next_consent_sweep.is_none() {
            if let Some(d) = self.consent_timeout.map(|_| now + super::CONSENT_SWEEP) {
                self.next_consent_sweep = Some(d);
                self.wake_at(d);
            }
        }
        let t = self.transports.get_mut(&h).expect("found above");
        if checked.plain && t.selected == Some(from) {
            let mut buf = out.take_buf();
            stun_check::binding_success(data, from.addr, &t.ice_key, &mut buf);
            t.stun_answered += 1;
            t.stats.tx(buf.len());
            out.push_sealed(from, buf, None); // STUN: never SRTP
            return true;
        }
        self.push_up(UpKind::Stun, h, from, data);
        true
    }

    fn on_dtls(&mut self, from: Remote, data: &[u8]) {
        let Some(&h) = self.by_addr.get(&from) else {
            self.drops.inc(DropReason::UnknownSource);
            return;
        };
        if let Some(t) = self.transports.get_mut(&h) {
            t.stats.rx(data.len());
        }
        self.push_up(UpKind::Dtls, h, from, data);
    }


    /// SRTP from a bound tuple: a producer packet, forwarded to its consumers.
    fn on_rtp(&mut self, now: Instant, from: Remote, data: &[u8], out: &mut Output) {
        let Some(&th) = self.by_addr.get(&from) else {
            self.drops.inc(DropReason::UnknownSource);
            return;
        };
        self.on_rtp_of(now, th, from, data, out);
    }

    /// An RTP packet for transport `th` (found by its tuple, or by the socket it came to).
    #[inline]
    pub(super) fn on_rtp_of(&mut self, now: Instant, th: Handle, from: Remote, data: &[u8], out: &mut Output) {
        let Some(th) = self.unprotect_rtp(th, from, data) else { return };
        let Some(a) = self.producer_stream(now, th, data.len()) else { return };
        let Router { transports, producers, consumers, drops, scratch, next_timeout, first_media, shares, sealing, .. } = self;
        let Some(p) = producers.get_mut(&a.stream.producer) else { return };
        let enc = a.stream.encoding;
        let pkt: &[u8] = scratch;
        let Some(loss) = p.encodings[enc].quality.on_arrival(now, &a, pkt, drops) else { return };
        if let Some(d) = loss.next_due {
            earliest(next_timeout, d);
        }
        let kf = p.note_key_frame(&a, pkt);
        let dd = p.parse_dd(kf.codec, enc, &a.hdr, pkt);
        let dd = dd.and_then(|desc| Some(DdFrame { desc, structure: p.encodings[enc].dd.structure()? }));
        if a.hdr.is_padding_only() {
            drops.inc(DropReason::PaddingOnly);
            for ch in &p.consumers {
                if let Some(c) = consumers.get_mut(ch) {
                    c.skip(enc, a.hdr.sequence);
                }
            }
            return;
        }
        if p.paused {
            drops.inc(DropReason::ProducerPaused);
            return;
        }
        let ingress = Ingress {
            data: pkt,
            hdr: &a.hdr,
            encoding: enc,
            router_pt: kf.router_pt,
            key_frame: kf.key_frame,
            codec: kf.codec,
            has_key_frames: kf.has_key_frames,
            ext_map: &p.ext_map,
            dd,
        };
        let mut fanout = Fanout { transports, drops, out, first_media, key_frame_wanted: false };
        let workers = sealing.workers();
        // Layers chosen by the dependency descriptor: the whole producer stays on this worker.
        let splittable = !(p.dd_id.is_some() && svc_dd::selects_by_dd(kf.codec));
        let (packets, bytes) = share::fan_out_split(
            shares,
            workers,
            a.stream.producer,
            splittable,
            &mut p.split,
            &p.consumers,
            consumers,
            &ingress,
            &mut fanout,
            now,
        );
        let filter_wants_key_frame = fanout.key_frame_wanted;
        p.stats.packets_out += packets;
        p.stats.bytes_out += bytes;
        while let Some((th, dest)) = self.first_media.pop() {
            self.push_up(UpKind::Media, th, dest, &[]);
        }
        if kf.request || loss.overflow || filter_wants_key_frame {
            self.request_key_frame(now, a.stream.producer, enc, out);
        }
        if loss.nack_due {
            self.send_upstream_nacks(now, a.stream.producer, enc, out);
        }
    }

    /// SRTP unprotect of a datagram for transport `th` from `from` into `scratch`; the
    /// transport if it authenticated (which may prove the tuple).
    #[inline]
    fn unprotect_rtp(&mut self, th: Handle, from: Remote, data: &[u8]) -> Option<Handle> {
        let Router { transports, drops, scratch, connect_pending, .. } = self;
        let Some(t) = transports.get_mut(&th) else {
            drops.inc(DropReason::UnknownSource);
            return None;
        };
        t.stats.rx(data.len());
        t.rtp_in += 1;
        let Some(rx) = t.rx.as_mut() else {
            drops.inc(DropReason::NoSrtp);
            return None;
        };
        scratch.clear();
        scratch.extend_from_slice(data);
        if let Err(e) = rx.unprotect_rtp(scratch) {
            drops.inc(srtp_drop(e, false));
            return None;
        }
        if t.authenticated_from(from) {
            *connect_pending = Some(th);
        }
        Some(th)
    }

    /// The producer stream of the plain packet in `scratch` (learnt if new) and its codec;
    /// an RTX packet is restored to the original in place. Counts it on its way.
    fn producer_stream(&mut self, now: Instant, th: Handle, len: usize) -> Option<RtpIn> {
        let Router { transports, producers, drops, scratch, twcc_epoch, .. } = self;
        let t = transports.get_mut(&th)?;
        let Ok(mut hdr) = rtp::parse(scratch) else {
            drops.inc(DropReason::RtpMalformed);
            return None;
        };
        let stream = match t.ssrc_in.get(&hdr.ssrc) {
            Some(r) => *r,
            None => match learn_ssrc(t, producers, scratch, &hdr, now) {
                Some(r) => r,
                None => {
                    drops.inc(DropReason::UnknownSsrc);
                    return None;
                }
            },
        };
        let Some(p) = producers.get_mut(&stream.producer) else {
            drops.inc(DropReason::UnknownSsrc);
            return None;
        };
        p.stats.rx(len);
        if let Some(id) = p.tcc_id {
            record_twcc(t, scratch, &hdr, id, now, *twcc_epoch);
        }
        let Some(enc) = p.encodings.get_mut(stream.encoding) else {
            drops.inc(DropReason::UnknownSsrc);
            return None;
        };
        enc.stats.rx(len);
        let (codec, rtx) = payload_kind(p, stream, scratch, &mut hdr, drops)?;
        Some(RtpIn { stream, hdr, codec, rtx })
    }
}

/// A producer packet past SRTP, its stream lookup and its payload type (RTX restored).
pub(super) struct RtpIn {
    pub(super) stream: StreamRef,
    pub(super) hdr: rtp::RtpHeader,
    /// Index of its codec in the producer's table.
    pub(super) codec: usize,
    /// It came as a retransmission (RTX).
    pub(super) rtx: bool,
}

/// The codec of a packet of `stream` and whether it is a retransmission; an RTX packet
/// (accepted only when the producer negotiated NACK) is restored to the original in `pkt`.
fn payload_kind(p: &Producer, stream: StreamRef, pkt: &mut Vec<u8>, hdr: &mut rtp::RtpHeader, drops: &mut Drops) -> Option<(usize, bool)> {
    let enc = &p.encodings[stream.encoding];
    match p.pt[(hdr.payload_type & 0x7f) as usize] {
        PtInfo::Media(i) if !stream.rtx => Some((i, false)),
        PtInfo::Rtx(i) if stream.rtx => {
            // Without upstream NACKs every RTX packet is unrequested (probing or a
            // retransmission nobody asked for): drop it, as a NACK-less receiver would.
            let Some(media_ssrc) = enc.media_ssrc.filter(|_| enc.quality.nack.is_some()) else {
                drops.inc(DropReason::Rtx);
                return None;
            };
            if hdr.is_padding_only() {
                drops.inc(DropReason::PaddingOnly);
                return None;
            }
            // Back to the original packet (OSN as sequence number), in place.
            let restored = rtp::rtx_restore(pkt, p.codecs[i].payload_type, media_ssrc);
            match restored.ok().and_then(|_| rtp::parse(pkt).ok()) {
                Some(h) => *hdr = h,
                None => {
                    drops.inc(DropReason::RtpMalformed);
                    return None;
                }
            }
            Some((i, true))
        }
        _ => {
            drops.inc(DropReason::UnknownPt);
            None
        }
    }
}

/// What loss bookkeeping decided about an arriving packet.
pub(super) struct Loss {
    /// Upstream NACKs are due now.
    pub(super) nack_due: bool,
    /// When they are due next.
    pub(super) next_due: Option<Instant>,
    /// The gap is beyond repair (or the numbering restarted): ask for a key frame.
    pub(super) overflow: bool,
}

impl StreamQuality {
    /// Loss bookkeeping of a packet of this stream: gaps to NACK upstream, retransmissions
    /// that fill them, statistics, the retransmission buffer. None: a duplicate, dropped.
    fn on_arrival(&mut self, now: Instant, a: &RtpIn, pkt: &[u8], drops: &mut Drops) -> Option<Loss> {
        let hdr = &a.hdr;
        let arrival = match self.nack.as_mut() {
            Some(g) => g.on_packet(now, hdr.sequence, a.rtx),
            None => Arrival::New,
        };
        if a.rtx {
            if arrival != Arrival::Recovered {
                self.rtx_duplicate += 1;
                drops.inc(DropReason::RtxDuplicate);
                return None;
            }
            self.rtx_in += 1;
        } else if arrival == Arrival::Duplicate {
            // Already forwarded (e.g. its retransmission overtook it): a second copy would
            // reuse the consumers' sequence numbers.
            drops.inc(DropReason::Duplicate);
            return None;
        }
        if arrival == Arrival::Restart {
            // New numbering: old statistics and buffered packets no longer apply.
            self.restart(now);
            if let Some(g) = self.nack.as_mut() {
                g.on_packet(now, hdr.sequence, false);
            }
        }
        self.rx.on_packet(now, hdr.sequence, hdr.timestamp, a.rtx);
        if let Some(b) = self.buffer.as_mut() {
            if !hdr.is_padding_only() {
                b.store(now, hdr.sequence, pkt);
            }
        }
        Some(Loss {
            nack_due: self.nack.as_ref().is_some_and(|g| g.is_due(now)),
            next_due: self.nack.as_ref().and_then(|g| g.next_due()),
            overflow: matches!(arrival, Arrival::Overflow | Arrival::Restart),
        })
    }
}

/// Key frame facts of an arriving packet.
pub(super) struct KeyFrames {
    /// The packet's payload type in the router's numbering.
    pub(super) router_pt: u8,
    pub(super) codec: rtp::Codec,
    pub(super) has_key_frames: bool,
    pub(super) key_frame: bool,
    /// The stream needs a key frame request (its first packet is not one, or one is wanted).
    pub(super) request: bool,
}

impl Producer {
    /// Key frame detection and counting for a packet of stream `a.stream`.
    fn note_key_frame(&mut self, a: &RtpIn, pkt: &[u8]) -> KeyFrames {
        let codec = &self.codecs[a.codec];
        let router_pt = codec.mapped_pt;
        let has_key_frames = self.video && codec.codec.has_keyframes();
        let key_frame = !a.hdr.is_padding_only() && has_key_frames && rtp::is_keyframe(codec.codec, a.hdr.payload(pkt));
        let enc = &mut self.encodings[a.stream.encoding];
        let first_packet = enc.stats.packets_in == 1;
        if key_frame {
            self.key_frames += 1;
            enc.key_frames += 1;
            enc.kf.outstanding_since = None;
            enc.kf.wanted = false;
        }
        let request = has_key_frames
            && !key_frame
            && !self.paused
            && (first_packet || (enc.kf.wanted && enc.kf.outstanding_since.is_none()));
        KeyFrames { router_pt, codec: codec.codec, has_key_frames, key_frame, request }
    }
}

impl Producer {
    /// The dependency descriptor of an AV1 or H264 packet of stream `enc` (when the producer
    /// negotiated the extension), resolved against the stream's last structure; None when
    /// absent or refused (refusals counted on the stream).
    #[inline]
    fn parse_dd(&mut self, codec: rtp::Codec, enc: usize, hdr: &rtp::RtpHeader, pkt: &[u8]) -> Option<dd::Descriptor> {
        let id = self.dd_id.filter(|_| svc_dd::selects_by_dd(codec))?;
        let value = rtp::find_extension(pkt, hdr, id)?;
        self.encodings.get_mut(enc)?.dd.parse(value).ok()
    }
}

/// Note the transport-wide sequence number of a producer packet for feedback (arrival
/// times from `epoch`).
fn record_twcc(t: &mut Transport, pkt: &[u8], hdr: &rtp::RtpHeader, id: u8, now: Instant, epoch: Instant) {
    let Some(v) = rtp::find_extension(pkt, hdr, id) else { return };
    let Some(seq) = v.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else { return };
    let rec = t.twcc.get_or_insert_with(|| Box::new(TwccRecorder::new()));
    rec.record(seq, now.saturating_duration_since(epoch).as_micros() as i64);
    t.twcc_media_ssrc = hdr.ssrc;
}

/// Find the producer stream of an SSRC not seen before (MID, then RID/RRID, then the single
/// unsignalled encoding) and remember it.
fn learn_ssrc(
    t: &mut Transport,
    producers: &mut HandleMap<Producer>,
    pkt: &[u8],
    hdr: &rtp::RtpHeader,
    now: Instant,
) -> Option<StreamRef> {
    let pt = (hdr.payload_type & 0x7f) as usize;
    // Candidate producers: the one with this MID, else every producer of the transport.
    let mut found: Option<StreamRef> = None;
    for &ph in &t.producers {
        let Some(p) = producers.get(&ph) else { continue };
        let rtx = match p.pt[pt] {
            PtInfo::Media(_) => false,
            PtInfo::Rtx(_) => true,
            PtInfo::None => continue,
        };
        let ext = |id: Option<u8>| -> Option<&[u8]> { rtp::find_extension(pkt, hdr, id?) };
        if let Some(mid) = ext(p.mid_id) {
            if p.mid.as_deref().map(str::as_bytes) != Some(mid) {
                continue;
            }
        } else if p.mid.is_some() && p.mid_id.is_some() && t.producers.len() > 1 {
            // Several producers and no MID to tell them apart: only an RID can decide.
        }
        let rid = if rtx { ext(p.rrid_id) } else { ext(p.rid_id) };
        let enc = if let Some(rid) = rid {
            p.encodings.iter().position(|e| e.spec.rid.as_deref().map(str::as_bytes) == Some(rid))
        } else if p.encodings.len() == 1 && p.encodings[0].spec.ssrc.is_none() && p.encodings[0].spec.rid.is_none() {
            let e = &p.encodings[0];
            let free = if rtx { e.rtx_ssrc.is_none() } else { e.media_ssrc.is_none() };
            free.then_some(0)
        } else {
            None
        };
        if let Some(enc) = enc {
            // RTX only after its media stream exists.
            if rtx && p.encodings[enc].media_ssrc.is_none() {
                continue;
            }
            found = Some(StreamRef { producer: ph, encoding: enc, rtx });
            break;
        }
    }
    let r = found?;
    let p = producers.get_mut(&r.producer)?;
    let e = &mut p.encodings[r.encoding];
    if r.rtx {
        if e.rtx_ssrc.is_some() {
            return None;
        }
        e.rtx_ssrc = Some(hdr.ssrc);
    } else {
        if e.media_ssrc.is_some() {
            // A second SSRC for an already bound stream (e.g. sender restarted): rebind.
            if let Some(old) = e.media_ssrc {
                t.ssrc_in.remove(&old);
            }
            e.quality.restart(now);
        }
        e.media_ssrc = Some(hdr.ssrc);
    }
    t.ssrc_in.insert(hdr.ssrc, r);
    Some(r)
}
