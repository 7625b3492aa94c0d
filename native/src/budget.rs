//! Retransmission budget of one consumer: what a viewer's NACKs may cost.
//!
//! A viewer that NACKs every packet of the buffer, again and again, on each of its consumers
//! would otherwise turn the server into an amplifier toward itself (or toward whatever its
//! tuple points at). Each consumer gets a token bucket in bytes:
//!
//! - it earns [`NACK_BUDGET_SHARE_PERCENT`] of every byte forwarded to the consumer (so the
//!   refill follows the consumer's real forwarded rate), or [`NACK_BUDGET_FLOOR_BYTES_PER_SEC`]
//!   of elapsed time if that is more (a low-bitrate stream still gets repairs);
//! - it holds at most [`NACK_BUDGET_BURST`] of that share at the consumer's measured
//!   forwarded bitrate (one-second window), and never less than
//!   [`NACK_BUDGET_MIN_BURST_BYTES`], so a lost key frame can be repaired at once;
//! - a retransmission is sent only if the bucket holds the buffered packet's size; what it
//!   really cost (RTX header and SRTP tag included) is taken, so the bucket may go slightly
//!   into debt, repaid by the next refill.
//!
//! Nothing runs on the forwarding path: the bucket is refilled lazily when a NACK is
//! answered, from the consumer's forwarded byte counter.

use std::time::{Duration, Instant};

/// Share of the forwarded bytes a consumer may receive again as retransmissions.
pub const NACK_BUDGET_SHARE_PERCENT: u64 = 50;
/// Refill floor, so a low-bitrate stream still gets repairs (≈ 3 MTU-size packets a second).
pub const NACK_BUDGET_FLOOR_BYTES_PER_SEC: u64 = 4_000;
/// Bucket capacity: this long of the share at the consumer's measured forwarded rate …
pub const NACK_BUDGET_BURST: Duration = Duration::from_millis(500);
/// … but at least this many bytes (ten MTU-size packets).
pub const NACK_BUDGET_MIN_BURST_BYTES: u64 = 12_000;
/// A packet is retransmitted to one consumer at most this many times.
pub const NACK_MAX_RESENDS: u8 = 3;

#[derive(Clone, Debug)]
pub struct RetransmitBudget {
    /// Bytes that may be sent (negative: debt of the last retransmission's overhead).
    tokens: i64,
    /// The consumer's forwarded byte counter at the last refill.
    forwarded_seen: u64,
    last_refill: Instant,
}

impl RetransmitBudget {
    pub fn new(now: Instant) -> Self {
        RetransmitBudget { tokens: NACK_BUDGET_MIN_BURST_BYTES as i64, forwarded_seen: 0, last_refill: now }
    }

    /// Capacity for a consumer whose forwarded bitrate (bits/s) is `rate_bps`.
    pub fn capacity(rate_bps: u64) -> u64 {
        let share_per_sec = rate_bps / 8 * NACK_BUDGET_SHARE_PERCENT / 100;
        let burst = share_per_sec.saturating_mul(NACK_BUDGET_BURST.as_millis() as u64) / 1000;
        burst.max(NACK_BUDGET_MIN_BURST_BYTES)
    }

    /// Refill from what was forwarded since the last call (`forwarded_total`: the consumer's
    /// forwarded byte counter) and the time elapsed; `rate_bps`: its measured forwarded rate.
    pub fn refill(&mut self, now: Instant, forwarded_total: u64, rate_bps: u64) {
        let forwarded = forwarded_total.saturating_sub(self.forwarded_seen);
        self.forwarded_seen = forwarded_total;
        let elapsed_us = now.saturating_duration_since(self.last_refill).as_micros().min(u64::MAX as u128) as u64;
        self.last_refill = self.last_refill.max(now);
        let share = forwarded.saturating_mul(NACK_BUDGET_SHARE_PERCENT) / 100;
        // The floor is a floor on the refill rate: it counts only while the share of the
        // measured rate is below it (else frequent refills would add it on top).
        let earned = if rate_bps / 8 * NACK_BUDGET_SHARE_PERCENT / 100 >= NACK_BUDGET_FLOOR_BYTES_PER_SEC {
            share
        } else {
            share.max(elapsed_us.saturating_mul(NACK_BUDGET_FLOOR_BYTES_PER_SEC) / 1_000_000)
        };
        let earned = earned.min(i64::MAX as u64) as i64;
        let cap = Self::capacity(rate_bps).min(i64::MAX as u64) as i64;
        self.tokens = self.tokens.saturating_add(earned).min(cap);
    }

    /// Whether `bytes` may be sent now (call `refill` first).
    pub fn allows(&self, bytes: usize) -> bool {
        self.tokens >= bytes.min(i64::MAX as usize) as i64
    }

    /// Take `bytes` for a retransmission that was sent.
    pub fn spend(&mut self, bytes: usize) {
        self.tokens = self.tokens.saturating_sub(bytes.min(i64::MAX as usize) as i64);
    }

    pub fn tokens(&self) -> i64 {
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earns_half_of_what_is_forwarded_up_to_its_capacity() {
        let t0 = Instant::now();
        let mut b = RetransmitBudget::new(t0);
        assert_eq!(b.tokens(), NACK_BUDGET_MIN_BURST_BYTES as i64);
        b.spend(NACK_BUDGET_MIN_BURST_BYTES as usize);
        assert_eq!(b.tokens(), 0);
        // 1 Mbit/s forwarded: 125 kB/s; capacity = 0.5 s × 62.5 kB/s.
        let rate = 1_000_000;
        assert_eq!(RetransmitBudget::capacity(rate), 31_250);
        // 10 kB forwarded over 1 ms: earns 5 kB (the floor would give 4 bytes).
        b.refill(t0 + Duration::from_millis(1), 10_000, rate);
        assert_eq!(b.tokens(), 5_000);
        assert!(b.allows(5_000) && !b.allows(5_001));
        // A lot forwarded: capped at the capacity.
        b.refill(t0 + Duration::from_millis(2), 1_000_000, rate);
        assert_eq!(b.tokens(), 31_250);
    }

    #[test]
    fn a_silent_stream_still_earns_the_floor() {
        let t0 = Instant::now();
        let mut b = RetransmitBudget::new(t0);
        b.spend(NACK_BUDGET_MIN_BURST_BYTES as usize + 100);
        assert_eq!(b.tokens(), -100, "the overhead of the last retransmission is a debt");
        b.refill(t0 + Duration::from_secs(2), 0, 0);
        assert_eq!(b.tokens(), 2 * NACK_BUDGET_FLOOR_BYTES_PER_SEC as i64 - 100);
        b.refill(t0 + Duration::from_secs(60), 0, 0);
        assert_eq!(b.tokens(), NACK_BUDGET_MIN_BURST_BYTES as i64);
        // Time going backwards (never with Instant, but be safe) earns nothing.
        b.spend(1_000);
        b.refill(t0, 0, 0);
        assert_eq!(b.tokens(), NACK_BUDGET_MIN_BURST_BYTES as i64 - 1_000);
    }

    #[test]
    fn a_constant_nack_flood_is_bounded_by_the_share() {
        // Forward 100 packets/s of 1200 bytes for 10 s; a viewer asks for 10× that back.
        let t0 = Instant::now();
        let mut b = RetransmitBudget::new(t0);
        let (mut fwd, mut resent) = (0u64, 0u64);
        for ms in 0..10_000u64 {
            let now = t0 + Duration::from_millis(ms);
            if ms % 10 == 0 {
                fwd += 1200;
            }
            b.refill(now, fwd, 960_000);
            if b.allows(1200) {
                // What a retransmission really costs: RTX header and SRTP tag on top.
                b.spend(1200 + 12);
                resent += 1200 + 12;
            }
        }
        assert!(resent <= fwd / 2 + NACK_BUDGET_MIN_BURST_BYTES + 1212, "{resent} of {fwd}");
        assert!(resent >= fwd * 45 / 100, "{resent} of {fwd}");
    }
}
