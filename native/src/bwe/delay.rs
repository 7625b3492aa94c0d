//! Delay-based congestion detection (the trendline filter of GCC, draft-ietf-rmcat-gcc-02
//! §5, in the form libwebrtc uses: a least-squares slope of the smoothed accumulated delay
//! instead of the draft's Kalman filter).
//!
//! Packets are grouped into send bursts of [`GROUP_SPAN_US`]; for two consecutive groups the
//! delay variation is `arrival gap - send gap`. A path whose queue grows makes arrivals
//! spread more than sends: the accumulated variation climbs, the slope over the last
//! [`WINDOW`] groups turns positive, and once the (gain-scaled) slope stays over an
//! adaptive threshold for [`OVERUSE_TIME_MS`] the path is *overusing*. A draining queue
//! (negative slope under the threshold) is *underusing*; anything else *normal*. The
//! threshold follows the signal (fast down, slow up) so a path with steady jitter does not
//! keep tripping it, within [`THRESHOLD_MIN`]..[`THRESHOLD_MAX`].
//!
//! Sans-IO: send and arrival times in microseconds in, a signal out. The two clocks are
//! independent (ours and the viewer's); only differences within each are used.

use std::collections::VecDeque;

/// Packets sent within this span of the group's first one form one group (a burst).
pub const GROUP_SPAN_US: i64 = 5_000;
/// Groups in the slope's regression window.
pub const WINDOW: usize = 20;
/// Weight of the previous value in the exponential smoothing of the accumulated delay.
const SMOOTHING: f64 = 0.9;
/// Gain on the slope before comparing it with the threshold (libwebrtc's value).
const TREND_GAIN: f64 = 4.0;
/// The slope counts at most this many groups of evidence.
const MAX_DELTAS: u32 = 60;
/// Initial threshold and its bounds, in the scaled-slope unit (ms).
pub const THRESHOLD_INIT: f64 = 12.5;
pub const THRESHOLD_MIN: f64 = 6.0;
pub const THRESHOLD_MAX: f64 = 600.0;
/// Adaptation speed of the threshold when the signal is above / below it.
const K_UP: f64 = 0.0087;
const K_DOWN: f64 = 0.039;
/// A signal this far above the threshold is an outlier and does not move it.
const THRESHOLD_OUTLIER: f64 = 15.0;
/// The signal must stay over the threshold this long to be an overuse.
pub const OVERUSE_TIME_MS: f64 = 10.0;

/// What the delay trend says about the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Usage {
    #[default]
    Normal,
    Underusing,
    Overusing,
}

#[derive(Clone, Copy, Debug)]
struct Group {
    first_send: i64,
    last_send: i64,
    last_arrival: i64,
}

/// Groups packets into send bursts and yields (send gap, arrival gap, arrival time) in ms
/// per completed group.
#[derive(Debug, Default)]
pub struct InterArrival {
    current: Option<Group>,
    prev: Option<Group>,
}

impl InterArrival {
    /// A packet sent at `send_us`, arrived at `arrival_us`. When it starts a new group, the
    /// deltas between the two groups before it.
    pub fn add(&mut self, send_us: i64, arrival_us: i64) -> Option<(f64, f64, f64)> {
        let Some(cur) = self.current.as_mut() else {
            self.current = Some(Group { first_send: send_us, last_send: send_us, last_arrival: arrival_us });
            return None;
        };
        if send_us < cur.first_send {
            return None; // reordered into an older group: no information on this path
        }
        if send_us - cur.first_send <= GROUP_SPAN_US {
            cur.last_send = cur.last_send.max(send_us);
            cur.last_arrival = cur.last_arrival.max(arrival_us);
            return None;
        }
        let done = *cur;
        self.current = Some(Group { first_send: send_us, last_send: send_us, last_arrival: arrival_us });
        let out = self.prev.map(|p| {
            let send = (done.last_send - p.last_send) as f64 / 1000.0;
            let arrival = (done.last_arrival - p.last_arrival) as f64 / 1000.0;
            (send, arrival, done.last_arrival as f64 / 1000.0)
        });
        self.prev = Some(done);
        out
    }
}

/// The trendline filter and overuse detector.
#[derive(Debug)]
pub struct Trendline {
    first_arrival_ms: Option<f64>,
    accumulated: f64,
    smoothed: f64,
    window: VecDeque<(f64, f64)>,
    deltas: u32,
    prev_trend: f64,
    threshold: f64,
    last_threshold_ms: Option<f64>,
    /// How long the signal has been over the threshold (< 0: it is not).
    time_over_ms: f64,
    over_count: u32,
    usage: Usage,
}

impl Default for Trendline {
    fn default() -> Self {
        Trendline {
            first_arrival_ms: None,
            accumulated: 0.0,
            smoothed: 0.0,
            window: VecDeque::with_capacity(WINDOW + 1),
            deltas: 0,
            prev_trend: 0.0,
            threshold: THRESHOLD_INIT,
            last_threshold_ms: None,
            time_over_ms: -1.0,
            over_count: 0,
            usage: Usage::Normal,
        }
    }
}

impl Trendline {
    pub fn usage(&self) -> Usage {
        self.usage
    }

    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// One group delta (ms): the send gap, the arrival gap, the group's arrival time.
    pub fn update(&mut self, send_delta: f64, arrival_delta: f64, arrival_ms: f64) -> Usage {
        let first = *self.first_arrival_ms.get_or_insert(arrival_ms);
        self.deltas = (self.deltas + 1).min(1000);
        self.accumulated += arrival_delta - send_delta;
        self.smoothed = SMOOTHING * self.smoothed + (1.0 - SMOOTHING) * self.accumulated;
        self.window.push_back((arrival_ms - first, self.smoothed));
        if self.window.len() > WINDOW {
            self.window.pop_front();
        }
        let trend = if self.window.len() == WINDOW { slope(&self.window).unwrap_or(self.prev_trend) } else { self.prev_trend };
        self.detect(trend, send_delta, arrival_ms);
        self.usage
    }

    fn detect(&mut self, trend: f64, send_delta: f64, now_ms: f64) {
        if self.deltas < 2 {
            return;
        }
        let signal = self.deltas.min(MAX_DELTAS) as f64 * trend * TREND_GAIN;
        if signal > self.threshold {
            self.time_over_ms = if self.time_over_ms < 0.0 { send_delta / 2.0 } else { self.time_over_ms + send_delta };
            self.over_count += 1;
            if self.time_over_ms > OVERUSE_TIME_MS && self.over_count > 1 && trend >= self.prev_trend {
                self.time_over_ms = 0.0;
                self.over_count = 0;
                self.usage = Usage::Overusing;
            }
        } else {
            self.time_over_ms = -1.0;
            self.over_count = 0;
            self.usage = if signal < -self.threshold { Usage::Underusing } else { Usage::Normal };
        }
        self.prev_trend = trend;
        self.adapt_threshold(signal, now_ms);
    }

    fn adapt_threshold(&mut self, signal: f64, now_ms: f64) {
        let last = *self.last_threshold_ms.get_or_insert(now_ms);
        if signal.abs() > self.threshold + THRESHOLD_OUTLIER {
            self.last_threshold_ms = Some(now_ms);
            return;
        }
        let k = if signal.abs() < self.threshold { K_DOWN } else { K_UP };
        let dt = (now_ms - last).clamp(0.0, 100.0);
        self.threshold = (self.threshold + k * (signal.abs() - self.threshold) * dt).clamp(THRESHOLD_MIN, THRESHOLD_MAX);
        self.last_threshold_ms = Some(now_ms);
    }
}

/// Least-squares slope of y over x (None when every x is the same).
fn slope(points: &VecDeque<(f64, f64)>) -> Option<f64> {
    let n = points.len() as f64;
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + (x - mx) * (y - my), b + (x - mx) * (x - mx)));
    (den != 0.0).then(|| num / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Groups every 20 ms (send), arriving with `extra_ms` more queueing delay per group.
    fn run(extra_ms: f64, groups: usize) -> Vec<Usage> {
        let mut ia = InterArrival::default();
        let mut tl = Trendline::default();
        let mut out = Vec::new();
        let mut delay = 0.0;
        for g in 0..groups as i64 {
            delay += extra_ms;
            let send = g * 20_000;
            let arrival = 1_000_000 + send + (delay * 1000.0) as i64;
            // Two packets per group, 1 ms apart.
            for k in 0..2 {
                if let Some((s, a, t)) = ia.add(send + k * 1000, arrival + k * 1000) {
                    out.push(tl.update(s, a, t));
                }
            }
        }
        out
    }

    #[test]
    fn groups_are_send_bursts() {
        let mut ia = InterArrival::default();
        assert_eq!(ia.add(0, 100), None);
        assert_eq!(ia.add(4_000, 4_100), None, "same burst");
        assert_eq!(ia.add(10_000, 10_100), None, "first group done, nothing to compare yet");
        assert_eq!(ia.add(20_000, 23_100), Some((6.0, 6.0, 10.1)), "last packets of the two groups");
        assert_eq!(ia.add(15_000, 50_000), None, "reordered into an older group");
        assert_eq!(ia.add(30_000, 33_100), Some((10.0, 13.0, 23.1)));
    }

    #[test]
    fn steady_delay_is_normal_growing_is_overuse_shrinking_is_underuse() {
        assert!(run(0.0, 100).iter().all(|u| *u == Usage::Normal));
        let growing = run(2.0, 60);
        assert_eq!(growing.last(), Some(&Usage::Overusing), "{growing:?}");
        assert!(!growing[..5].contains(&Usage::Overusing), "not before the window holds evidence");
        let mut ia = InterArrival::default();
        let mut tl = Trendline::default();
        let mut last = Usage::Normal;
        // A queue that drains: arrivals closer together than sends.
        for g in 0..60i64 {
            let send = g * 20_000;
            let arrival = 2_000_000 + g * 17_000;
            if let Some((s, a, t)) = ia.add(send, arrival) {
                last = tl.update(s, a, t);
            }
        }
        assert_eq!(last, Usage::Underusing);
    }

    #[test]
    fn threshold_adapts_within_bounds() {
        let mut tl = Trendline::default();
        // Jitter around zero: the threshold comes down toward the signal, not below the floor.
        for i in 0..2000 {
            let jitter = if i % 2 == 0 { 1.0 } else { -1.0 };
            tl.update(20.0, 20.0 + jitter, i as f64 * 20.0);
        }
        assert!((THRESHOLD_MIN..THRESHOLD_INIT).contains(&tl.threshold()), "{}", tl.threshold());
    }
}
