//! Timer work (`handle_timeout`): key frame requests still wanted after the last one expired,
//! upstream NACK retries, transport-wide feedback toward senders, stream bitrates and
//! simulcast layer choice (with bandwidth probes before a move up), sender and receiver
//! reports.

use std::time::Instant;

use crate::rtcp;
use crate::rtp::Codec;

use super::consumer::Kind;
use super::svc_dd;
use super::egress::push_rtcp;
use super::probing::start_probe;
use super::output::Output;
use super::output::UpKind;
use super::{Handle, Router, CONSENT_SWEEP, KEY_FRAME_INTERVAL, REPORT_INTERVAL, TWCC_INTERVAL};
use crate::remote::Remote;

impl Router {
    /// Periodic work: re-request key frames still wanted after an outstanding request expired;
    /// transport-wide feedback toward senders; stream bitrates and simulcast layer choice.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Output) {
        self.send_twcc_feedback(now, out);
        self.update_layers(now, out);
        self.handle_key_frame_timeouts(now, out);
        // After the key frame timers: they reset the wake-up time these add to.
        self.probe_timeout(now, out);
        self.consent_timeout(now);
    }

    /// RFC 7675 consent, checked every CONSENT_SWEEP while some transport has it: a transport
    /// whose last valid Binding request is older than the timeout is told upward once (Python
    /// closes it). Requests that renew consent are counted in `on_stun`, whoever answers them.
    fn consent_timeout(&mut self, now: Instant) {
        let (Some(limit), Some(due)) = (self.consent_timeout, self.next_consent_sweep) else { return };
        if now < due {
            self.wake_at(due);
            return;
        }
        let mut lost: Vec<(Handle, Remote)> = Vec::new();
        let mut live = false;
        for (&h, t) in self.transports.iter_mut() {
            let Some(at) = t.consent_at else { continue };
            if t.consent_lost {
                continue;
            }
            if now.saturating_duration_since(at) >= limit {
                t.consent_lost = true;
                lost.push((h, t.selected.or(t.nominated).unwrap_or(Remote::udp(([0, 0, 0, 0], 0).into()))));
            } else {
                live = true;
            }
        }
        for (h, from) in lost {
            self.push_up(UpKind::ConsentLost, h, from, &[]);
        }
        self.next_consent_sweep = live.then(|| now + CONSENT_SWEEP);
        if let Some(d) = self.next_consent_sweep {
            self.wake_at(d);
        }
    }

    fn send_twcc_feedback(&mut self, now: Instant, out: &mut Output) {
        let Router { transports, drops, .. } = self;
        for t in transports.values_mut() {
            let dest = t.rtcp_feedback_dest();
            let Some(rec) = t.twcc.as_mut() else { continue };
            if !rec.has_pending() || t.twcc_last.is_some_and(|l| now.saturating_duration_since(l) < TWCC_INTERVAL) {
                continue;
            }
            let (Some(tx), Some(dest)) = (t.tx.as_mut(), dest) else { continue };
            let mut buf = out.take_buf();
            rec.build_feedback(&mut buf, 0, t.twcc_media_ssrc);
            t.twcc_last = Some(now);
            push_rtcp(tx, &mut t.stats, &mut t.rtcp_out, drops, out, dest, buf);
        }
    }

    /// Roll the stream bitrate windows and move simulcast consumers to the layer their
    /// preference and their viewer's estimate allow (asking that layer for a key frame); a
    /// simulcast, VP9 SVC or AV1/H264 layered consumer held below its preference on a
    /// send-side estimate gets its path probed.
    fn update_layers(&mut self, now: Instant, out: &mut Output) {
        let mut wanted: Vec<(Handle, usize)> = Vec::new();
        for p in self.producers.values_mut() {
            // Simulcast consumers choose their stream here; VP9 SVC ones, and single-stream
            // ones selected by the dependency descriptor (AV1, H264), choose their layers in
            // their filter, and may ask for a probe here.
            let simulcast = p.encodings.len() >= 2;
            if !simulcast && !p.codecs.iter().any(|c| c.codec == Codec::Vp9 || svc_dd::selects_by_dd(c.codec)) {
                continue;
            }
            let mut rates = [0u64; 8];
            let n = p.encodings.len().min(rates.len());
            for (r, e) in rates.iter_mut().zip(&p.encodings) {
                *r = e.quality.rate.bps;
            }
            for ch in &p.consumers {
                let Some(c) = self.consumers.get_mut(ch) else { continue };
                let Some(t) = self.transports.get_mut(&c.transport) else { continue };
                let estimate = t.bwe.estimate(now);
                if simulcast {
                    if let Some(target) = c.update_layer(now, &rates[..n], estimate) {
                        wanted.push((c.producer, target));
                    }
                }
                if let Some((next, current)) = c.probe_for(&rates[..n], estimate) {
                    // What the transport would send after the move: its current rate with
                    // this consumer's layer replaced by the next one.
                    start_probe(now, t, t.rate_out.bps.saturating_sub(current) + next);
                }
            }
        }
        for (ph, enc) in wanted {
            self.request_key_frame(now, ph, enc, out);
        }
    }

    fn handle_key_frame_timeouts(&mut self, now: Instant, out: &mut Output) {
        let mut due: Vec<(Handle, usize)> = Vec::new();
        let mut next: Option<Instant> = None;
        for (&ph, p) in &self.producers {
            for (i, e) in p.encodings.iter().enumerate() {
                if let Some(t) = e.kf.outstanding_since {
                    let deadline = t + KEY_FRAME_INTERVAL;
                    if now >= deadline {
                        due.push((ph, i));
                    } else {
                        next = Some(next.map_or(deadline, |n: Instant| n.min(deadline)));
                    }
                }
            }
        }
        self.next_timeout = next;
        for (ph, i) in due {
            let still_wanted = {
                let p = &self.producers[&ph];
                p.encodings[i].kf.wanted || p.consumers.iter().any(|c| self.consumers.get(c).is_some_and(|c| c.wants_key_frame_of(i)))
            };
            let p = self.producers.get_mut(&ph).expect("listed above");
            p.encodings[i].kf.outstanding_since = None;
            if still_wanted {
                self.request_key_frame(now, ph, i, out);
            }
        }
        self.quality_timeout(now, out);
    }

    /// Timer work of loss repair and reports: NACK retries, then (every REPORT_INTERVAL)
    /// bitrates, SRs toward viewers and RRs toward producers.
    fn quality_timeout(&mut self, now: Instant, out: &mut Output) {
        let mut due: Vec<(Handle, usize)> = Vec::new();
        let mut next: Option<Instant> = None;
        for (&ph, p) in &self.producers {
            for (i, e) in p.encodings.iter().enumerate() {
                let Some(g) = e.quality.nack.as_ref() else { continue };
                if g.is_due(now) {
                    due.push((ph, i));
                } else if let Some(d) = g.next_due() {
                    next = Some(next.map_or(d, |n: Instant| n.min(d)));
                }
            }
        }
        for (ph, i) in due {
            self.send_upstream_nacks(now, ph, i, out);
        }
        match self.next_report {
            Some(t) if now < t => {}
            Some(_) => {
                self.send_reports(now, out);
                self.next_report = Some(now + REPORT_INTERVAL);
            }
            None => self.next_report = Some(now + REPORT_INTERVAL),
        }
        for d in [next, self.next_report].into_iter().flatten() {
            self.wake_at(d);
        }
    }

    /// Bitrate samples; SR + SDES for each consumer stream that has sent (timestamps in
    /// the consumer's numbering); RR for the producer streams of each transport.
    fn send_reports(&mut self, now: Instant, out: &mut Output) {
        let Router { transports, producers, consumers, drops, ntp, .. } = self;
        for t in transports.values_mut() {
            t.rate_in.sample(now, t.stats.bytes_in);
            t.rate_out.sample(now, t.stats.bytes_out);
        }
        for c in consumers.values_mut() {
            c.quality.rate.sample(now, c.stats.bytes_out);
            if c.paused || !c.quality.tx.has_sent() {
                continue;
            }
            if let Kind::Pipe(pipe) = &mut c.kind {
                // One SR per stream, carrying the producer stream's NTP↔RTP mapping as is
                // (a pipe keeps the timestamps): the far router's producer syncs from them.
                let (Some(p), Some(t)) = (producers.get(&c.producer), transports.get_mut(&c.transport)) else { continue };
                let dest = t.rtcp_media_dest();
                for (s, e) in pipe.streams.iter_mut().zip(&p.encodings) {
                    let (Some(tx), Some(dest)) = (t.tx.as_mut(), dest) else { break };
                    if !s.tx.has_sent() {
                        continue;
                    }
                    let info = s.tx.sender_info(now, ntp, e.quality.rx.clock_rate(), s.ssrc, e.quality.rx.last_sr);
                    let mut buf = out.take_buf();
                    rtcp::build_sr(&mut buf, &info, &[]);
                    rtcp::build_sdes_cname(&mut buf, s.ssrc, &c.quality.cname);
                    push_rtcp(tx, &mut t.stats, &mut t.rtcp_out, drops, out, dest, buf);
                }
                continue;
            }
            let Some(e) = producers.get(&c.producer).and_then(|p| p.encodings.get(c.encoding)) else { continue };
            let (clock_rate, sr) = (e.quality.rx.clock_rate(), e.quality.rx.last_sr);
            // The producer's NTP↔RTP mapping in this consumer's timestamps (simulcast offset).
            let offset = c.ts_offset();
            let sr = sr.map(|mut sr| {
                sr.rtp_timestamp = sr.rtp_timestamp.wrapping_add(offset);
                sr
            });
            let Some(t) = transports.get_mut(&c.transport) else { continue };
            let dest = t.rtcp_media_dest();
            let (Some(tx), Some(dest)) = (t.tx.as_mut(), dest) else { continue };
            let info = c.quality.tx.sender_info(now, ntp, clock_rate, c.ssrc, sr);
            let mut buf = out.take_buf();
            rtcp::build_sr(&mut buf, &info, &[]);
            rtcp::build_sdes_cname(&mut buf, c.ssrc, &c.quality.cname);
            push_rtcp(tx, &mut t.stats, &mut t.rtcp_out, drops, out, dest, buf);
        }
        let mut blocks: Vec<rtcp::ReportBlock> = Vec::new();
        for t in transports.values_mut() {
            if t.producers.is_empty() {
                continue;
            }
            blocks.clear();
            for ph in &t.producers {
                let Some(p) = producers.get_mut(ph) else { continue };
                for e in p.encodings.iter_mut() {
                    e.quality.rate.sample(now, e.stats.bytes_in);
                    if let (Some(ssrc), true) = (e.media_ssrc, e.quality.rx.started()) {
                        blocks.push(e.quality.rx.report_block(now, ssrc));
                    }
                }
            }
            let dest = t.rtcp_feedback_dest();
            let (false, Some(tx), Some(dest)) = (blocks.is_empty(), t.tx.as_mut(), dest) else { continue };
            let mut buf = out.take_buf();
            rtcp::build_rr(&mut buf, t.rtcp_ssrc, &blocks);
            push_rtcp(tx, &mut t.stats, &mut t.rtcp_out, drops, out, dest, buf);
        }
    }
}
