//! Statistics for Python: object counts, counters per object (`stats`), and per-stream RTP
//! statistics with mediasoup-like names (`rtp_stats`).

use std::time::{Duration, Instant};

use super::consumer::Consumer;
use super::producer::{Encoding, Producer};
use super::spec::{Result, RouterError};
use super::transport::{Counters, Transport};
use super::{Handle, Router};

/// Object counts, for leak checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub transports: usize,
    pub producers: usize,
    pub consumers: usize,
    /// Producer streams (encodings) plus consumer streams.
    pub streams: usize,
    /// Remote addresses bound to a transport (every transport's tuples).
    pub tuples: usize,
}

/// A stats value for Python.
#[derive(Clone, Debug, PartialEq)]
pub enum StatValue {
    Int(u64),
    Str(String),
    Bool(bool),
    Float(f64),
}

fn counters(c: &Counters) -> Vec<(&'static str, StatValue)> {
    use StatValue::*;
    vec![
        ("packetsReceived", Int(c.packets_in)),
        ("bytesReceived", Int(c.bytes_in)),
        ("packetsSent", Int(c.packets_out)),
        ("bytesSent", Int(c.bytes_out)),
    ]
}

fn ms(d: Duration) -> StatValue {
    StatValue::Float(d.as_secs_f64() * 1000.0)
}

impl Router {
    pub fn counts(&self) -> Counts {
        Counts {
            transports: self.transports.len(),
            producers: self.producers.len(),
            consumers: self.consumers.len(),
            streams: self.producers.values().map(|p| p.encodings.len()).sum::<usize>() + self.consumers.len(),
            tuples: self.by_addr.len(),
        }
    }

    /// Counters and state of object `h` (any kind) at `now`.
    pub fn stats(&self, now: Instant, h: Handle) -> Result<Vec<(&'static str, StatValue)>> {
        if let Some(t) = self.transports.get(&h) {
            return Ok(transport_stats(t, now));
        }
        if let Some(p) = self.producers.get(&h) {
            return Ok(producer_stats(p));
        }
        if let Some(c) = self.consumers.get(&h) {
            return Ok(consumer_stats(c));
        }
        Err(RouterError::Unknown(format!("unknown handle {h}")))
    }

    /// Per-stream RTP statistics with mediasoup-like (camelCase) names at `now`: one record for
    /// a transport or a consumer, one per encoding for a producer.
    pub fn rtp_stats(&self, now: Instant, h: Handle) -> Result<Vec<Vec<(&'static str, StatValue)>>> {
        if let Some(t) = self.transports.get(&h) {
            return Ok(vec![transport_rtp_stats(t, now)]);
        }
        if let Some(p) = self.producers.get(&h) {
            return Ok(p.encodings.iter().enumerate().map(|(i, e)| encoding_rtp_stats(i, e)).collect());
        }
        if let Some(c) = self.consumers.get(&h) {
            return Ok(vec![consumer_rtp_stats(c)]);
        }
        Err(RouterError::Unknown(format!("unknown handle {h}")))
    }
}

fn transport_stats(t: &Transport, now: Instant) -> Vec<(&'static str, StatValue)> {
    use StatValue::*;
    let mut v = vec![("type", Str("transport".into()))];
    v.extend(counters(&t.stats));
    v.push(("rtpPacketsReceived", Int(t.rtp_in)));
    v.push(("rtcpPacketsReceived", Int(t.rtcp_in)));
    v.push(("rtcpPacketsSent", Int(t.rtcp_out)));
    v.push(("stunReceived", Int(t.stun_in)));
    v.push(("stunAnswered", Int(t.stun_answered)));
    v.push(("dtlsReceived", Int(t.dtls_in)));
    v.push(("tuples", Int(t.tuples.len() as u64)));
    v.push(("selectedTuple", Str(t.selected.map(|a| a.to_string()).unwrap_or_default())));
    v.push(("nominatedTuple", Str(t.nominated.map(|a| a.to_string()).unwrap_or_default())));
    v.push(("provenTuples", Int(t.tuples.iter().filter(|a| a.proven).count() as u64)));
    v.push(("stunRejected", Int(t.stun_rejected)));
    v.push(("upQueueFull", Int(t.up_dropped)));
    v.push(("srtp", Bool(t.tx.is_some())));
    // Several workers: the worker that protects and sends this transport's datagrams.
    if let Some(w) = t.tx.as_ref().and_then(|tx| tx.owner()) {
        v.push(("sendingWorker", Int(w as u64)));
    }
    v.push(("availableBitrate", Int(t.bwe.available_bitrate(now).unwrap_or(0))));
    v.push(("rembReceived", Int(t.bwe.remb_in)));
    v.push(("transportCcPackets", Int(t.twcc.as_ref().map_or(0, |r| r.packets_recorded))));
    v.push(("transportCcFeedbackSent", Int(t.twcc.as_ref().map_or(0, |r| r.feedback_sent))));
    // Send-side estimate (viewers that negotiated transport-cc; bwe/send_side.rs).
    if let Some(ss) = &t.bwe.send_side {
        v.push(("transportCcStamped", Int(ss.packets_sent)));
        v.push(("transportCcFeedbackReceived", Int(ss.feedback_in)));
        v.push(("transportCcFeedbackMalformed", Int(t.bwe.feedback_malformed)));
        v.push(("transportCcAcked", Int(ss.packets_acked)));
        v.push(("transportCcLost", Int(ss.packets_lost)));
        v.push(("delayOveruses", Int(ss.overuses)));
        v.push(("probes", Int(ss.prober.probes)));
        v.push(("probesSucceeded", Int(ss.prober.succeeded)));
        v.push(("probesFailed", Int(ss.prober.failed)));
        v.push(("probePaddingPackets", Int(ss.prober.padding_packets)));
    }
    if let Some(p) = &t.plain {
        v.push(("plain", Bool(true)));
        v.push(("comedia", Bool(p.comedia)));
        v.push(("wrongSourceDropped", Int(p.wrong_source)));
        v.push(("rtcpMux", Bool(p.rtcp.is_none())));
        if let Some(r) = &p.rtcp {
            v.push(("rtcpTuple", Str(r.remote.map(|a| a.to_string()).unwrap_or_default())));
            v.push(("rtpOnRtcpPortDropped", Int(r.rtp_on_rtcp_port)));
            v.push(("rtcpOnRtpPortDropped", Int(r.rtcp_on_rtp_port)));
        }
    }
    v
}

fn producer_stats(p: &Producer) -> Vec<(&'static str, StatValue)> {
    use StatValue::*;
    let mut v = vec![("type", Str("producer".into()))];
    v.extend(counters(&p.stats));
    v.push(("keyFrames", Int(p.key_frames)));
    v.push(("keyFrameRequestsSent", Int(p.encodings.iter().map(|e| e.kf.requests_sent).sum())));
    v.push(("paused", Bool(p.paused)));
    v.push(("consumers", Int(p.consumers.len() as u64)));
    let join = |f: &dyn Fn(&Encoding) -> u64| p.encodings.iter().map(|e| f(e).to_string()).collect::<Vec<_>>().join(",");
    v.push(("layerBitrates", Str(join(&|e| e.quality.rate.bps))));
    v.push(("layerPackets", Str(join(&|e| e.stats.packets_in))));
    v.push(("layerKeyFrames", Str(join(&|e| e.key_frames))));
    v
}

fn consumer_stats(c: &Consumer) -> Vec<(&'static str, StatValue)> {
    use StatValue::*;
    let mut v = vec![("type", Str("consumer".into()))];
    v.extend(counters(&c.stats));
    v.push(("dropped", Int(c.dropped)));
    v.push(("keyFrameRequestsReceived", Int(c.key_frame_requests_in)));
    v.push(("paused", Bool(c.paused)));
    v.push(("waitingKeyFrame", Bool(c.wait_key_frame)));
    v.push(("ssrc", Int(c.ssrc as u64)));
    v.push(("currentLayer", Int(c.current_spatial() as u64)));
    v.push(("targetLayer", Int(c.target_spatial() as u64)));
    v.push(("preferredLayer", Int(c.preferred_spatial() as u64)));
    v.push(("layerSwitches", Int(c.layer_switches())));
    // Temporal layers (VP8 with TIDs, VP9 SVC): the one forwarded, only once known.
    if let Some(t) = c.current_temporal() {
        v.push(("currentTemporalLayer", Int(t as u64)));
    }
    v.push(("preferredTemporalLayer", Int(c.preferred_temporal as u64)));
    v.push(("temporalFramesDropped", Int(c.layer_frames_dropped())));
    v.push(("nackBudgetDrops", Int(c.quality.nack_budget_drops)));
    v.push(("nackMaxResendDrops", Int(c.quality.nack_max_resend_drops)));
    v
}

fn transport_rtp_stats(t: &Transport, now: Instant) -> Vec<(&'static str, StatValue)> {
    use StatValue::*;
    let mut r = vec![
        ("type", Str("transport".into())),
        ("bytesReceived", Int(t.stats.bytes_in)),
        ("bytesSent", Int(t.stats.bytes_out)),
        ("packetsReceived", Int(t.stats.packets_in)),
        ("packetsSent", Int(t.stats.packets_out)),
        ("rtpPacketsReceived", Int(t.rtp_in)),
        ("rtcpPacketsReceived", Int(t.rtcp_in)),
        ("rtcpPacketsSent", Int(t.rtcp_out)),
        ("recvBitrate", Int(t.rate_in.bps)),
        ("sendBitrate", Int(t.rate_out.bps)),
        ("rembReceived", Int(t.bwe.remb_in)),
        ("transportCcPackets", Int(t.twcc.as_ref().map_or(0, |r| r.packets_recorded))),
        ("transportCcFeedbackSent", Int(t.twcc.as_ref().map_or(0, |r| r.feedback_sent))),
        ("transportCcFeedbackReceived", Int(t.bwe.send_side.as_ref().map_or(0, |s| s.feedback_in))),
    ];
    // The viewer's estimate (bwe.rs), only while one is known.
    if let Some(b) = t.bwe.available_bitrate(now) {
        r.push(("availableBitrate", Int(b)));
    }
    // How the send-side estimate got there (transport-cc viewers): congestion signals and
    // probes, as in the engine stats.
    if let Some(ss) = &t.bwe.send_side {
        r.push(("transportCcLost", Int(ss.packets_lost)));
        r.push(("delayOveruses", Int(ss.overuses)));
        r.push(("probes", Int(ss.prober.probes)));
        r.push(("probesSucceeded", Int(ss.prober.succeeded)));
        r.push(("probesFailed", Int(ss.prober.failed)));
        r.push(("probePaddingPackets", Int(ss.prober.padding_packets)));
    }
    r
}

fn encoding_rtp_stats(i: usize, e: &Encoding) -> Vec<(&'static str, StatValue)> {
    use StatValue::*;
    let q = &e.quality;
    let g = q.nack.as_ref();
    let mut r = vec![
        ("type", Str("inbound-rtp".into())),
        ("layer", Int(i as u64)),
        ("ssrc", Int(e.media_ssrc.unwrap_or(0) as u64)),
        ("rtxSsrc", Int(e.rtx_ssrc.unwrap_or(0) as u64)),
        ("rid", Str(e.spec.rid.clone().unwrap_or_default())),
        ("packetCount", Int(e.stats.packets_in)),
        ("byteCount", Int(e.stats.bytes_in)),
        ("packetsLost", Int(q.rx.lost().max(0) as u64)),
        ("fractionLost", Float(q.rx.fraction_lost as f64 / 256.0)),
        ("jitter", Int(q.rx.jitter() as u64)),
        ("nackCount", Int(g.map_or(0, |g| g.batches))),
        ("nackPacketCount", Int(g.map_or(0, |g| g.requested))),
        ("packetsRetransmitted", Int(q.rtx_in + q.rtx_duplicate)),
        ("packetsRepaired", Int(q.rtx_in)),
        ("packetsReordered", Int(g.map_or(0, |g| g.reordered))),
        ("packetsGivenUp", Int(g.map_or(0, |g| g.gave_up))),
        ("packetsDiscarded", Int(q.rtx_duplicate)),
        ("pliCount", Int(q.plis_sent)),
        ("firCount", Int(q.firs_sent)),
        ("keyFrames", Int(e.key_frames)),
        ("bitrate", Int(q.rate.bps)),
        // AV1 and H264 dependency descriptors read, and refused (malformed, or naming no template).
        ("dependencyDescriptors", Int(e.dd.parsed)),
        ("dependencyDescriptorErrors", Int(e.dd.errors)),
    ];
    // RTT toward the producer, estimated from NACK → retransmission times.
    if let Some(g) = g.filter(|g| g.rtt_measured) {
        r.push(("roundTripTime", ms(g.rtt())));
    }
    r
}

fn consumer_rtp_stats(c: &Consumer) -> Vec<(&'static str, StatValue)> {
    use StatValue::*;
    let q = &c.quality;
    let mut r = vec![
        ("type", Str("outbound-rtp".into())),
        ("layer", Int(c.encoding as u64)),
        ("ssrc", Int(c.ssrc as u64)),
        ("rtxSsrc", Int(c.rtx_ssrc.unwrap_or(0) as u64)),
        ("packetCount", Int(c.stats.packets_out)),
        ("byteCount", Int(c.stats.bytes_out)),
        ("packetsRetransmitted", Int(q.tx.rtx_packets)),
        ("bytesRetransmitted", Int(q.tx.rtx_bytes)),
        ("packetsLost", Int(q.tx.cumulative_lost.max(0) as u64)),
        ("fractionLost", Float(q.tx.fraction_lost as f64 / 256.0)),
        ("jitter", Int(q.tx.jitter as u64)),
        ("nackCount", Int(q.nacks_in)),
        ("nackPacketCount", Int(q.nack_seqs_in)),
        ("pliCount", Int(q.plis_in)),
        ("firCount", Int(q.firs_in)),
        ("senderReports", Int(q.tx.srs_sent)),
        ("receiverReports", Int(q.tx.reports_received)),
        ("bitrate", Int(q.rate.bps)),
        ("paused", Bool(c.paused)),
        // The layers forwarded (simulcast stream or SVC spatial layer; temporal once known).
        ("spatialLayer", Int(c.current_spatial() as u64)),
        ("targetLayer", Int(c.target_spatial() as u64)),
        ("preferredSpatialLayer", Int(c.preferred_spatial() as u64)),
        ("layerSwitches", Int(c.layer_switches())),
    ];
    if let Some(t) = c.current_temporal() {
        r.push(("temporalLayer", Int(t as u64)));
    }
    if let Some(rtt) = q.tx.rtt {
        r.push(("roundTripTime", ms(rtt)));
    }
    r
}
