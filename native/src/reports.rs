//! RTCP report bookkeeping, sans-IO: reception statistics of a producer stream (RFC 3550
//! A.3 loss, A.8 jitter, LSR/DLSR) for the receiver reports we send upstream; sending
//! statistics of a consumer stream for the sender reports we send to a viewer, and what the
//! viewer's receiver reports tell us back (round-trip time, loss, jitter).

use std::time::{Duration, Instant};

use crate::nack::SeqExtender;
use crate::rtcp::{ReportBlock, SenderInfo};

/// Seconds between 1900 (NTP era 0) and 1970 (Unix).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// 64-bit NTP time from a monotonic `Instant`, anchored once to a wall-clock reading the
/// caller makes (sans-IO: nothing here reads a clock).
#[derive(Clone, Copy, Debug)]
pub struct NtpClock {
    base: Instant,
    base_ntp: u64,
}

impl NtpClock {
    /// `unix_time`: the wall clock at `now`, since the Unix epoch.
    pub fn new(now: Instant, unix_time: Duration) -> Self {
        NtpClock { base: now, base_ntp: ntp_add(NTP_UNIX_OFFSET << 32, unix_time) }
    }

    pub fn ntp(&self, now: Instant) -> u64 {
        ntp_add(self.base_ntp, now.saturating_duration_since(self.base))
    }
}

/// `ntp` plus `d` (NTP 32.32 fixed point).
pub fn ntp_add(ntp: u64, d: Duration) -> u64 {
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    ntp.wrapping_add(d.as_secs() << 32).wrapping_add(frac)
}

/// The middle 32 bits of an NTP timestamp (LSR field).
#[inline]
pub fn ntp_mid(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// Duration in units of 1/65536 s (DLSR field).
#[inline]
pub fn to_dlsr(d: Duration) -> u32 {
    ((d.as_secs_f64() * 65536.0) as u64).min(u32::MAX as u64) as u32
}

/// Bits per second over the interval between two samples of a byte counter.
#[derive(Clone, Copy, Debug, Default)]
pub struct BitrateSampler {
    last_bytes: u64,
    last_at: Option<Instant>,
    pub bps: u64,
}

impl BitrateSampler {
    pub fn sample(&mut self, now: Instant, total_bytes: u64) {
        if let Some(at) = self.last_at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            if dt > 0.0 {
                self.bps = (total_bytes.saturating_sub(self.last_bytes) as f64 * 8.0 / dt) as u64;
            }
        }
        self.last_bytes = total_bytes;
        self.last_at = Some(now);
    }
}

/// The last sender report of a producer stream.
#[derive(Clone, Copy, Debug)]
pub struct SrInfo {
    pub ntp: u64,
    pub rtp_timestamp: u32,
    pub at: Instant,
}

/// Reception statistics of one producer stream.
#[derive(Debug)]
pub struct ReceiveStats {
    clock_rate: u32,
    epoch: Instant,
    seqs: SeqExtender,
    base: i64,
    pub received: u64,
    expected_prior: i64,
    received_prior: u64,
    /// RFC 3550 A.8 interarrival jitter, in timestamp units.
    jitter: f64,
    last_transit: Option<u32>,
    pub last_sr: Option<SrInfo>,
    pub fraction_lost: u8,
}

impl ReceiveStats {
    pub fn new(now: Instant, clock_rate: u32) -> Self {
        ReceiveStats {
            clock_rate: clock_rate.max(1),
            epoch: now,
            seqs: SeqExtender::default(),
            base: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            jitter: 0.0,
            last_transit: None,
            last_sr: None,
            fraction_lost: 0,
        }
    }

    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// A packet was accepted. Retransmissions count as received but not for jitter (their
    /// arrival time says nothing about the path's jitter).
    #[inline]
    pub fn on_packet(&mut self, now: Instant, seq: u16, timestamp: u32, retransmitted: bool) {
        let (e, prev) = self.seqs.update(seq);
        if prev.is_none() || e < self.base {
            self.base = e;
        }
        self.received += 1;
        if retransmitted {
            return;
        }
        let arrival = (now.saturating_duration_since(self.epoch).as_secs_f64() * self.clock_rate as f64) as u64 as u32;
        let transit = arrival.wrapping_sub(timestamp);
        if let Some(last) = self.last_transit {
            let d = (transit.wrapping_sub(last) as i32).unsigned_abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    pub fn on_sender_report(&mut self, now: Instant, ntp: u64, rtp_timestamp: u32) {
        self.last_sr = Some(SrInfo { ntp, rtp_timestamp, at: now });
    }

    pub fn started(&self) -> bool {
        self.received > 0
    }

    pub fn expected(&self) -> i64 {
        self.seqs.max().map_or(0, |m| m - self.base + 1)
    }

    /// Cumulative packets lost (expected − received; negative with duplicates).
    pub fn lost(&self) -> i64 {
        self.expected() - self.received as i64
    }

    /// Jitter in timestamp units.
    pub fn jitter(&self) -> u32 {
        self.jitter as u32
    }

    /// A reception report block for `ssrc`; starts a new interval for the fraction lost.
    pub fn report_block(&mut self, now: Instant, ssrc: u32) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected - self.expected_prior;
        let received_interval = self.received as i64 - self.received_prior as i64;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval - received_interval;
        self.fraction_lost = if expected_interval <= 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval).min(255) as u8
        };
        let (last_sr, delay) = match self.last_sr {
            Some(sr) => (ntp_mid(sr.ntp), to_dlsr(now.saturating_duration_since(sr.at))),
            None => (0, 0),
        };
        ReportBlock {
            ssrc,
            fraction_lost: self.fraction_lost,
            cumulative_lost: self.lost().clamp(-0x80_0000, 0x7f_ffff) as i32,
            highest_seq: self.seqs.max().unwrap_or(0) as u32,
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr: delay,
        }
    }
}

/// Sending statistics of one consumer stream and the viewer's reports about it.
#[derive(Debug, Default)]
pub struct SendStats {
    pub packets: u64,
    /// Payload octets (the SR's octet count).
    pub octets: u64,
    pub rtx_packets: u64,
    pub rtx_bytes: u64,
    last_ts: u32,
    last_at: Option<Instant>,
    /// Recent SRs sent: (LSR value, when), to match the viewer's LSR echo.
    sent: [(u32, Option<Instant>); 4],
    sent_next: usize,
    pub srs_sent: u64,
    pub rtt: Option<Duration>,
    pub fraction_lost: u8,
    pub cumulative_lost: i32,
    pub jitter: u32,
    pub reports_received: u64,
}

impl SendStats {
    /// The RTP timestamp of the last packet sent (0 before the first).
    pub fn last_timestamp(&self) -> u32 {
        self.last_ts
    }

    #[inline]
    pub fn on_sent(&mut self, now: Instant, timestamp: u32, payload_len: usize) {
        self.packets += 1;
        self.octets += payload_len as u64;
        self.last_ts = timestamp;
        self.last_at = Some(now);
    }

    pub fn has_sent(&self) -> bool {
        self.last_at.is_some()
    }

    /// Sender info for an SR sent now. With the producer's last SR, its NTP↔RTP mapping is
    /// carried over (the sender's clock, so audio and video stay in sync at the viewer);
    /// without one, the last sent timestamp is extrapolated on our clock.
    pub fn sender_info(&mut self, now: Instant, clock: &NtpClock, clock_rate: u32, ssrc: u32, producer_sr: Option<SrInfo>) -> SenderInfo {
        let (ntp, rtp) = match producer_sr {
            Some(sr) => {
                let d = now.saturating_duration_since(sr.at);
                let ticks = (d.as_secs_f64() * clock_rate as f64) as u64 as u32;
                (ntp_add(sr.ntp, d), sr.rtp_timestamp.wrapping_add(ticks))
            }
            None => {
                let d = self.last_at.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
                let ticks = (d.as_secs_f64() * clock_rate as f64) as u64 as u32;
                (clock.ntp(now), self.last_ts.wrapping_add(ticks))
            }
        };
        self.sent[self.sent_next] = (ntp_mid(ntp), Some(now));
        self.sent_next = (self.sent_next + 1) % self.sent.len();
        self.srs_sent += 1;
        SenderInfo {
            ssrc,
            ntp,
            rtp_timestamp: rtp,
            packet_count: self.packets as u32,
            octet_count: self.octets as u32,
        }
    }

    /// The viewer's report block about this stream: loss, jitter and, when it echoes one of
    /// our SRs, the round-trip time (now − SR sent − the viewer's delay).
    pub fn on_report_block(&mut self, now: Instant, b: &ReportBlock) {
        self.reports_received += 1;
        self.fraction_lost = b.fraction_lost;
        self.cumulative_lost = b.cumulative_lost;
        self.jitter = b.jitter;
        if b.last_sr == 0 {
            return;
        }
        let Some(sent) = self.sent.iter().find(|(lsr, at)| at.is_some() && *lsr == b.last_sr).and_then(|s| s.1) else {
            return;
        };
        let delay = Duration::from_secs_f64(b.delay_since_last_sr as f64 / 65536.0);
        let rtt = now.saturating_duration_since(sent).saturating_sub(delay);
        self.rtt = Some(rtt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn loss_fraction_and_cumulative_follow_rfc3550() {
        let t0 = Instant::now();
        let mut r = ReceiveStats::new(t0, 90000);
        // 65530..=65535, 0..=3 with 65533 and 1 missing (wrap included): expected 10, got 8.
        for s in [65530u16, 65531, 65532, 65534, 65535, 0, 2, 3] {
            r.on_packet(t0, s, 0, false);
        }
        let b = r.report_block(t0, 7);
        assert_eq!(b.ssrc, 7);
        assert_eq!(b.cumulative_lost, 2);
        assert_eq!(b.fraction_lost, (2 * 256 / 10) as u8);
        assert_eq!(b.highest_seq, 65536 + 3);
        // One of them arrives late: cumulative 1, and this interval had no loss.
        r.on_packet(t0, 1, 0, true);
        let b = r.report_block(t0, 7);
        assert_eq!(b.cumulative_lost, 1);
        assert_eq!(b.fraction_lost, 0);
        assert_eq!((b.last_sr, b.delay_since_last_sr), (0, 0));
    }

    #[test]
    fn jitter_tracks_arrival_variation_and_ignores_retransmissions() {
        let t0 = Instant::now();
        let mut r = ReceiveStats::new(t0, 90000);
        // 20 ms frames arriving exactly on time: no jitter.
        for i in 0..50u32 {
            r.on_packet(t0 + ms(20 * i as u64), i as u16, 1800 * i, false);
        }
        assert_eq!(r.jitter(), 0);
        // Alternate 0/+5 ms: every transit difference is 450 ticks, jitter converges to 450.
        for i in 50..400u32 {
            let off = if i % 2 == 0 { 5 } else { 0 };
            r.on_packet(t0 + ms(20 * i as u64 + off), i as u16, 1800 * i, false);
        }
        assert!((430..=450).contains(&r.jitter()), "jitter {}", r.jitter());
        let j = r.jitter();
        r.on_packet(t0 + ms(100_000), 400, 1800 * 400, true);
        assert_eq!(r.jitter(), j);
    }

    #[test]
    fn lsr_dlsr_and_round_trip_time() {
        let t0 = Instant::now();
        let clock = NtpClock::new(t0, Duration::from_secs(1_700_000_000));
        let mut r = ReceiveStats::new(t0, 90000);
        r.on_packet(t0, 1, 0, false);
        let sr_ntp = 0x1234_5678_9abc_def0u64;
        r.on_sender_report(t0, sr_ntp, 1000);
        let b = r.report_block(t0 + ms(500), 1);
        assert_eq!(b.last_sr, 0x5678_9abc);
        assert_eq!(b.delay_since_last_sr, 32768);

        // Our SR to a viewer; the viewer answers 30 ms later after holding it 10 ms.
        let mut s = SendStats::default();
        s.on_sent(t0, 90_000, 1000);
        let info = s.sender_info(t0 + ms(100), &clock, 90000, 42, None);
        assert_eq!(info.ssrc, 42);
        assert_eq!(info.rtp_timestamp, 90_000 + 9000);
        assert_eq!((info.packet_count, info.octet_count), (1, 1000));
        let block = ReportBlock {
            ssrc: 42,
            fraction_lost: 3,
            cumulative_lost: 5,
            highest_seq: 1,
            jitter: 77,
            last_sr: ntp_mid(info.ntp),
            delay_since_last_sr: to_dlsr(ms(10)),
        };
        s.on_report_block(t0 + ms(130), &block);
        let rtt = s.rtt.unwrap();
        assert!(rtt >= ms(19) && rtt <= ms(21), "{rtt:?}");
        assert_eq!((s.fraction_lost, s.cumulative_lost, s.jitter), (3, 5, 77));
        // With the producer's SR, its mapping is carried over.
        let sr = SrInfo { ntp: sr_ntp, rtp_timestamp: 5000, at: t0 };
        let info = s.sender_info(t0 + ms(1000), &clock, 90000, 42, Some(sr));
        assert_eq!(info.rtp_timestamp, 5000 + 90000);
        assert_eq!(info.ntp, ntp_add(sr_ntp, ms(1000)));
    }

    #[test]
    fn ntp_clock_is_wall_clock_and_monotonic() {
        let t0 = Instant::now();
        let unix = 1_700_000_000u64;
        let c = NtpClock::new(t0, Duration::from_millis(unix * 1000 + 250));
        assert_eq!(c.ntp(t0) >> 32, unix + NTP_UNIX_OFFSET);
        assert_eq!(c.ntp(t0) as u32, 1 << 30, "a quarter second");
        assert_eq!(c.ntp(t0 + ms(500)) - c.ntp(t0), 1 << 31);
        let mut m = BitrateSampler::default();
        m.sample(t0, 0);
        m.sample(t0 + ms(500), 1000);
        assert_eq!(m.bps, 16000);
    }
}
