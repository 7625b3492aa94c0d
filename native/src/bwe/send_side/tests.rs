//! The estimator against a simulated path: packets through a bottleneck (capacity, queue,
//! deterministic loss) and transport-cc feedback every 100 ms, as a viewer sends it.

use super::*;
use crate::bwe::probe::{PADDING_OVERHEAD, PADDING_SIZE, PROBE_DURATION};
use crate::twcc::PacketResult;

const MS: Duration = Duration::from_millis(1);

/// A bottleneck: packets queue behind each other at `capacity` bit/s (None: no limit);
/// every `drop_every`-th packet is lost.
struct Path {
    capacity: Option<u64>,
    free_at: i64,
    drop_every: Option<u32>,
    n: u32,
}

impl Path {
    fn new(capacity: Option<u64>, drop_every: Option<u32>) -> Self {
        Path { capacity, free_at: 0, drop_every, n: 0 }
    }

    fn carry(&mut self, send_us: i64, size: usize) -> Option<i64> {
        self.n += 1;
        if self.drop_every.is_some_and(|k| self.n.is_multiple_of(k)) {
            return None;
        }
        let start = send_us.max(self.free_at);
        let tx = self.capacity.map_or(0, |c| size as i64 * 8 * 1_000_000 / c as i64);
        self.free_at = start + tx;
        Some(self.free_at + 20_000)
    }
}

/// Sender + path + viewer: media at `rate` in 1000-byte packets, feedback every 100 ms.
struct Sim {
    ss: SendSide,
    path: Path,
    t0: Instant,
    now: Instant,
    /// (seq, arrival µs on the viewer's clock) of packets not yet reported.
    in_flight: Vec<(u16, Option<i64>)>,
    outcomes: Vec<Outcome>,
}

impl Sim {
    fn new(path: Path) -> Self {
        let t0 = Instant::now();
        Sim { ss: SendSide::new(t0), path, t0, now: t0, in_flight: Vec::new(), outcomes: Vec::new() }
    }

    fn us(&self) -> i64 {
        (self.now - self.t0).as_micros() as i64
    }

    fn send(&mut self, size: usize) {
        let seq = self.ss.next_seq();
        self.ss.on_sent(self.now, seq, size);
        let arrival = self.path.carry(self.us(), size);
        self.in_flight.push((seq, arrival));
    }

    /// Report every packet up to the last one that has arrived by now.
    fn feedback(&mut self) {
        let now_us = self.us();
        let Some(last) = self.in_flight.iter().rposition(|p| p.1.is_some_and(|a| a <= now_us)) else { return };
        let packets = self.in_flight.drain(..=last).map(|(seq, a)| PacketResult { seq, arrival_us: a.filter(|a| *a <= now_us) }).collect::<Vec<_>>();
        let fb = Feedback { base_seq: packets[0].seq, reference_time_us: 0, feedback_count: 0, packets };
        if let Some(o) = self.ss.on_feedback(self.now, &fb) {
            self.outcomes.push(o);
        }
    }

    /// Run for `ms` milliseconds sending media at `rate` bit/s (plus probe padding).
    fn run(&mut self, ms: u64, rate: u64) {
        let per_ms = rate as f64 / 8.0 / 1000.0;
        let mut credit = 0.0;
        for _ in 0..ms {
            self.now += MS;
            credit += per_ms;
            while credit >= 1000.0 {
                self.send(1000);
                credit -= 1000.0;
            }
            for _ in 0..self.ss.prober.padding_due(self.now) {
                self.send(PADDING_SIZE + PADDING_OVERHEAD);
            }
            if (self.now - self.t0).as_millis().is_multiple_of(100) {
                self.feedback();
            }
        }
    }

    fn estimate(&self) -> u64 {
        self.ss.available_bitrate(self.now).expect("an estimate")
    }
}

#[test]
fn steady_delay_raises_the_estimate() {
    let mut s = Sim::new(Path::new(None, None));
    s.run(300, 1_000_000);
    assert_eq!(s.ss.available_bitrate(s.now), None, "none before the acknowledged window fills");
    s.run(700, 1_000_000);
    let first = s.estimate();
    assert!((1_400_000..1_600_000).contains(&first), "starts at 1.5 x what arrives: {first}");
    // A narrow spell brings it down; once the path is wide again and the delay steady, it
    // climbs back, up to 1.5 x what arrives.
    s.path.capacity = Some(600_000);
    s.run(1_500, 1_000_000);
    s.path.capacity = None;
    s.run(1_000, 1_000_000);
    let low = s.estimate();
    assert!(low < 700_000, "{low}");
    s.run(4_000, 1_000_000);
    let later = s.estimate();
    assert!(later > low * 12 / 10, "rises while the delay is steady: {low} -> {later}");
    assert!(later <= 1_530_000, "but not beyond 1.5 x what arrives: {later}");
    s.run(10_000, 1_000_000);
    assert!((1_400_000..=1_530_000).contains(&s.estimate()), "{}", s.estimate());
    assert_eq!(s.ss.packets_lost, 0);
    assert!(s.ss.packets_acked > 2_000);
}

#[test]
fn growing_delay_lowers_the_estimate() {
    let mut s = Sim::new(Path::new(Some(5_000_000), None));
    s.run(2_000, 1_000_000);
    let before = s.estimate();
    assert!(before >= 1_000_000, "{before}");
    // The path narrows to 700 kbit/s: the queue grows by 300 kbit/s.
    s.path.capacity = Some(700_000);
    s.run(1_500, 1_000_000);
    let after = s.estimate();
    assert!(s.ss.overuses > 0, "overuse detected");
    assert!(after < 700_000, "below the new capacity: {before} -> {after}");
    assert_eq!(s.ss.packets_lost, 0, "delay alone, no loss");
}

#[test]
fn loss_over_ten_percent_lowers_the_estimate_and_low_loss_lifts_the_cap() {
    let mut s = Sim::new(Path::new(None, None));
    s.run(2_000, 1_000_000);
    let before = s.estimate();
    // Every 5th packet lost (20 %), no queueing.
    s.path.drop_every = Some(5);
    s.run(1_000, 1_000_000);
    let after = s.estimate();
    assert!(after < before * 9 / 10, "{before} -> {after}");
    assert!(s.ss.packets_lost > 20, "{}", s.ss.packets_lost);
    // Loss between 2 % and 10 % (every 20th: 5 %) holds the cap.
    s.path.drop_every = Some(20);
    s.run(1_000, 1_000_000);
    assert!(s.estimate() <= after, "held");
    // No loss: the cap goes, the delay-based rate is the estimate again.
    s.path.drop_every = None;
    s.run(1_000, 1_000_000);
    assert!(s.estimate() > after, "{after} -> {}", s.estimate());
}

#[test]
fn a_probe_over_a_wide_path_raises_the_estimate() {
    let mut s = Sim::new(Path::new(Some(10_000_000), None));
    s.run(2_000, 400_000);
    let before = s.estimate();
    assert!(before < 700_000, "{before}");
    s.ss.prober.start(s.now, 1_200_000);
    s.run(PROBE_DURATION.as_millis() as u64 + 300, 400_000);
    let [Outcome::Succeeded(r)] = s.outcomes[..] else { panic!("{:?}", s.outcomes) };
    assert!((1_200_000..1_700_000).contains(&r), "about the probe rate (1.44 Mbit/s): {r}");
    assert!(s.estimate() >= 1_200_000, "estimate raised to the result: {}", s.estimate());
    assert!(s.ss.prober.padding_packets == 0, "the prober counts only what the router reports");
}

#[test]
fn a_probe_over_a_narrow_path_fails_at_the_path_rate() {
    let mut s = Sim::new(Path::new(Some(800_000), None));
    s.run(2_000, 400_000);
    let before = s.estimate();
    s.ss.prober.start(s.now, 1_200_000);
    s.run(PROBE_DURATION.as_millis() as u64 + 600, 400_000);
    let [Outcome::Failed(Some(r))] = s.outcomes[..] else { panic!("{:?}", s.outcomes) };
    assert!((600_000..850_000).contains(&r), "capped by the path (800 kbit/s): {r}");
    assert!(s.estimate() < 1_200_000, "{before} -> {}", s.estimate());
}

#[test]
fn history_is_bounded_and_unknown_or_repeated_reports_are_ignored() {
    let t0 = Instant::now();
    let mut ss = SendSide::new(t0);
    for _ in 0..(HISTORY * 3) {
        let seq = ss.next_seq();
        ss.on_sent(t0, seq, 1200);
    }
    assert_eq!(ss.history.len(), HISTORY);
    // Sequence numbers long overwritten, and ones never sent.
    let old = Feedback { base_seq: 0, reference_time_us: 0, feedback_count: 0, packets: (0..100).map(|seq| PacketResult { seq, arrival_us: Some(1000) }).collect() };
    ss.on_feedback(t0, &old);
    let never = Feedback { base_seq: 60_000, reference_time_us: 0, feedback_count: 0, packets: (60_000..60_100).map(|seq| PacketResult { seq, arrival_us: None }).collect() };
    ss.on_feedback(t0, &never);
    assert_eq!((ss.packets_acked, ss.packets_lost), (0, 0));
    let last = (HISTORY * 3 - 1) as u16;
    let fb = Feedback { base_seq: last, reference_time_us: 0, feedback_count: 0, packets: vec![PacketResult { seq: last, arrival_us: Some(5) }] };
    ss.on_feedback(t0, &fb);
    ss.on_feedback(t0, &fb);
    assert_eq!(ss.packets_acked, 1, "a packet is acknowledged once");
}

#[test]
fn a_higher_send_rate_that_arrives_without_congestion_lifts_the_estimate_at_once() {
    // A viewer moved up by its preference: the server sends 1.2 Mbit/s instead of 400
    // kbit/s; the path carries it, so within a second the estimate covers it (the 8 %/s
    // growth alone would take 10 s and the viewer would be moved back down meanwhile).
    let mut s = Sim::new(Path::new(Some(10_000_000), None));
    s.run(2_000, 400_000);
    let before = s.estimate();
    assert!(before < 700_000, "{before}");
    s.run(1_000, 1_200_000);
    let after = s.estimate();
    assert!(after >= 1_150_000, "{before} -> {after}");
    assert_eq!(s.ss.overuses, 0);
}

#[test]
fn prefetch_changes_nothing() {
    let t0 = Instant::now();
    let mut ss = SendSide::new(t0);
    ss.prefetch();
    let seq = ss.next_seq();
    ss.prefetch();
    assert_eq!(ss.next_seq(), seq.wrapping_add(1), "the sequence goes on as before");
    assert_eq!(ss.packets_sent, 0);
}
