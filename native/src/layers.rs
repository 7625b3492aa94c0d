//! Which simulcast layer (encoding) a consumer receives.
//!
//! The target is the highest layer with traffic that is not above the viewer's preference and
//! whose measured ingress bitrate fits the viewer's bandwidth estimate (bwe/), the lowest
//! active one if none fits. The layer being received counts as fitting while the estimate is at least
//! [`KEEP_PERCENT`] of its bitrate. How a viewer gets back up depends on where its estimate comes
//! from:
//!
//! - **REMB** (viewers without transport-cc): Chrome's receive-side estimate never rises
//!   above about 1.5× what it receives and climbs only gradually (AIMD), so an estimate
//!   taken while a viewer got a lower layer, or shortly after it moved up, says little about
//!   the layer it gets now (measured with Chromium: after a move up, its next REMB was still
//!   below the new layer's rate). Such an estimate only counts if it arrived at least
//!   [`SETTLE`] after the consumer's start or last move up, and a viewer held below its
//!   preference tries the next layer up blindly after [`UP_TRY_AFTER`] when the estimate
//!   leaves [`HEADROOM_PERCENT`] headroom over the layer it receives; if that is too much,
//!   its next (lower) estimate moves it back down.
//! - **send-side** (transport-cc): the estimate follows what the server sends within a
//!   feedback interval, so it counts [`SEND_SIDE_SETTLE`] after a move up (the time the
//!   acknowledged bitrate needs to see the new layer). A viewer held below its preference is
//!   not moved up blindly: [`LayerState::probe_for`] names the next layer's bitrate, the
//!   router probes the path at that rate (bwe/probe.rs), and a successful probe raises the
//!   estimate so that the next decision moves the viewer up at once.
//!
//! Sans-IO and allocation-free: times and rates in, a layer index out.

use std::time::{Duration, Instant};

use crate::bwe::Estimate;

/// REMB estimates arriving sooner than this after a consumer starts or moves up are not used.
pub const SETTLE: Duration = Duration::from_secs(5);
/// The same for send-side estimates.
pub const SEND_SIDE_SETTLE: Duration = Duration::from_secs(1);
/// No probe on estimates from sooner than this after a move down: the path just showed
/// congestion and its queue is still draining (a probe into it, measured with Chromium behind
/// a capped relay, lost packets, froze the picture and cost one more layer).
pub const PROBE_AFTER_DOWN: Duration = Duration::from_millis(1500);
/// How long a viewer stays below its preference because of its REMB estimate before trying up.
pub const UP_TRY_AFTER: Duration = Duration::from_secs(8);
/// Estimate over the current layer's bitrate, in percent, needed to try the next layer up.
pub const HEADROOM_PERCENT: u64 = 120;
/// A consumer keeps its layer while the estimate is at least this share of the layer's
/// bitrate, in percent (hysteresis against noise). A send-side estimate falls to 85 % of
/// what arrives on each overuse, and what arrives is this layer with audio and headers, so a
/// single overuse (a key frame burst, a probe that found no room) would otherwise move a
/// viewer whose path carries its layer down a layer, with a key frame and a visible cut;
/// a path that really cannot carry the layer overuses again and the estimate falls further.
pub const KEEP_PERCENT: u64 = 90;

/// The highest active layer not above `preferred` whose bitrate fits `estimate` (the lowest
/// active one if none fits). Layers with no traffic in the last window are not candidates;
/// when no layer is known active yet, the preferred one.
pub fn select_layer(preferred: usize, bitrates: &[u64], estimate: Option<u64>) -> usize {
    let top = preferred.min(bitrates.len().saturating_sub(1));
    let active = |i: &usize| bitrates[*i] > 0;
    let Some(lowest) = (0..=top).find(active) else { return top };
    match estimate {
        None => (0..=top).rev().find(active).unwrap_or(lowest),
        Some(e) => (0..=top).rev().filter(active).find(|&i| bitrates[i] <= e).unwrap_or(lowest),
    }
}

/// Per-consumer layer selection state.
#[derive(Debug, Clone, Copy)]
pub struct LayerState {
    /// The consumer started or last moved up (or its preference rose) then: estimates
    /// from before this instant plus their settling time are ignored.
    moved_up: Instant,
    /// Since when the estimate keeps the consumer below its preference.
    held_since: Option<Instant>,
    /// The last decision, held while the estimate settles after a move up (None: at the
    /// start or after a raised preference, which the consumer then gets at once).
    last: Option<usize>,
    /// The consumer last moved down (or was still waiting to) then.
    moved_down: Option<Instant>,
}

impl LayerState {
    pub fn new(now: Instant) -> Self {
        LayerState { moved_up: now, held_since: None, last: None, moved_down: None }
    }

    /// The preference went up: decide on fresh estimates only.
    pub fn preference_raised(&mut self, now: Instant) {
        self.moved_up = now;
        self.held_since = None;
        self.last = None;
    }

    /// The estimate, if it counts (it came late enough after the last move up).
    fn usable(&self, estimate: Option<Estimate>) -> Option<Estimate> {
        estimate.filter(|e| e.at > self.moved_up + if e.send_side { SEND_SIDE_SETTLE } else { SETTLE })
    }

    /// The bitrate to probe before a move up, when the consumer is settled on `current`
    /// below its preference, its send-side estimate does not cover the next active layer,
    /// and a probe could show it does. None otherwise (no probe: at the top, REMB, or the
    /// estimate already suffices).
    pub fn probe_for(&self, preferred: usize, current: usize, target: usize, bitrates: &[u64], estimate: Option<Estimate>) -> Option<u64> {
        let e = self.usable(estimate).filter(|e| e.send_side)?;
        if self.moved_down.is_some_and(|d| e.at < d + PROBE_AFTER_DOWN) {
            return None;
        }
        if target != current || bitrates.get(current).is_none_or(|r| *r == 0) {
            return None;
        }
        let best = select_layer(preferred, bitrates, None);
        let next = (current + 1..=best).find(|&i| bitrates[i] > 0)?;
        (bitrates[next] > e.bitrate).then_some(bitrates[next])
    }

    /// The layer to receive now. `current`: the layer being forwarded; `estimate`: the
    /// viewer's estimate and when it was last updated.
    pub fn decide(&mut self, now: Instant, preferred: usize, current: usize, bitrates: &[u64], estimate: Option<Estimate>) -> usize {
        let usable = self.usable(estimate);
        let est = usable.map(|e| e.bitrate);
        let blind_try = usable.is_some_and(|e| !e.send_side);
        let best = select_layer(preferred, bitrates, None);
        let mut target = match self.last {
            // Settling after a move up: the layer moved to, not the top one (an estimate
            // too old to count says nothing about the layers above it either).
            Some(last) if estimate.is_some() && usable.is_none() && bitrates.get(last).is_some_and(|r| *r > 0) => last.min(best),
            _ => select_layer(preferred, bitrates, est),
        };
        let current_rate = bitrates.get(current).copied().unwrap_or(0);
        let keeps = est.is_some_and(|e| e.saturating_mul(100) >= current_rate.saturating_mul(KEEP_PERCENT));
        if target < current && current <= best && current_rate > 0 && keeps {
            target = current;
        }
        if target < best {
            let since = *self.held_since.get_or_insert(now);
            let headroom = est.is_some_and(|e| e.saturating_mul(100) >= current_rate.saturating_mul(HEADROOM_PERCENT));
            if blind_try && target == current && headroom && now.saturating_duration_since(since) >= UP_TRY_AFTER {
                if let Some(next) = (current + 1..=best).find(|&i| bitrates[i] > 0) {
                    target = next;
                }
                self.held_since = None;
            }
        } else {
            self.held_since = None;
        }
        if target > current {
            self.moved_up = now;
        } else if target < current {
            self.moved_down = Some(now);
        }
        self.last = Some(target);
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remb((bitrate, at): (u64, Instant)) -> Option<Estimate> {
        Some(Estimate { bitrate, at, send_side: false })
    }

    fn send_side(bitrate: u64, at: Instant) -> Option<Estimate> {
        Some(Estimate { bitrate, at, send_side: true })
    }

    #[test]
    fn selection_follows_preference_activity_and_estimate() {
        let rates = [100_000, 400_000, 1_200_000];
        assert_eq!(select_layer(2, &rates, None), 2);
        assert_eq!(select_layer(0, &rates, None), 0);
        assert_eq!(select_layer(9, &rates, None), 2, "clamped");
        assert_eq!(select_layer(2, &rates, Some(500_000)), 1);
        assert_eq!(select_layer(2, &rates, Some(50_000)), 0, "lowest when nothing fits");
        assert_eq!(select_layer(1, &rates, Some(5_000_000)), 1, "never above the preference");
        assert_eq!(select_layer(2, &[100_000, 400_000, 0], None), 1, "inactive top layer skipped");
        assert_eq!(select_layer(2, &[0, 0, 0], Some(1)), 2, "nothing known yet: the preference");
    }

    #[test]
    fn down_on_a_low_estimate_up_when_it_fits_or_after_a_try() {
        let t0 = Instant::now();
        // Times after the consumer's settling period.
        let s = |n: u64| t0 + SETTLE + Duration::from_millis(n);
        let rates = [100_000, 400_000, 1_200_000];
        let mut st = LayerState::new(t0);
        // An estimate from the consumer's first seconds does not count.
        assert_eq!(st.decide(s(10), 2, 2, &rates, remb((500_000, t0 + SETTLE / 2))), 2);
        // A fresh low estimate moves it down.
        assert_eq!(st.decide(s(20), 2, 2, &rates, remb((500_000, s(15)))), 1);
        // Held at 1 (the estimate, 500k, leaves 25 % headroom over 400k)...
        assert_eq!(st.decide(s(1000), 2, 1, &rates, remb((500_000, s(15)))), 1);
        // ... until UP_TRY_AFTER has passed: then one layer up, and the old estimate is void.
        let later = s(20) + UP_TRY_AFTER;
        assert_eq!(st.decide(later, 2, 1, &rates, remb((500_000, s(15)))), 2);
        assert_eq!(st.decide(later + Duration::from_millis(50), 2, 2, &rates, remb((500_000, s(15)))), 2);
        // A low estimate soon after the try does not count; one after SETTLE moves it down.
        let t = later + SETTLE / 2;
        assert_eq!(st.decide(t, 2, 2, &rates, remb((450_000, t))), 2);
        let t = later + SETTLE + Duration::from_millis(100);
        assert_eq!(st.decide(t, 2, 2, &rates, remb((450_000, t))), 1);
        // Without headroom there is no try.
        let mut st = LayerState::new(t0);
        assert_eq!(st.decide(s(20), 2, 2, &rates, remb((410_000, s(15)))), 1);
        assert_eq!(st.decide(s(20) + UP_TRY_AFTER * 2, 2, 1, &rates, remb((410_000, s(15)))), 1);
        // An estimate that fits moves it up at once.
        assert_eq!(st.decide(s(30), 2, 1, &rates, remb((2_000_000, s(25)))), 2);
        // A raised preference voids older estimates.
        let mut st = LayerState::new(t0);
        assert_eq!(st.decide(s(20), 0, 0, &rates, remb((300_000, s(15)))), 0);
        st.preference_raised(s(30));
        assert_eq!(st.decide(s(40), 2, 0, &rates, remb((300_000, s(15)))), 2);
        assert_eq!(st.decide(s(50), 2, 2, &rates, remb((300_000, s(45)))), 2, "settling");
    }

    #[test]
    fn a_move_up_settles_on_the_layer_moved_to_not_the_top() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_millis(n);
        let rates = [100_000, 400_000, 1_200_000];
        let mut st = LayerState::new(t0);
        assert_eq!(st.decide(s(1200), 2, 2, &rates, send_side(200_000, s(1100))), 0);
        // The estimate covers layer 1: up to 1, and while it settles, 1 (not the top).
        assert_eq!(st.decide(s(2000), 2, 0, &rates, send_side(500_000, s(1950))), 1);
        assert_eq!(st.decide(s(2100), 2, 0, &rates, send_side(500_000, s(2050))), 1, "switch pending");
        assert_eq!(st.decide(s(2500), 2, 1, &rates, send_side(500_000, s(2450))), 1, "settling");
        assert_eq!(st.decide(s(3200), 2, 1, &rates, send_side(500_000, s(3150))), 1, "settled");
        // A lowered preference applies while settling.
        assert_eq!(st.decide(s(3300), 2, 1, &rates, send_side(2_000_000, s(3250))), 2);
        assert_eq!(st.decide(s(3400), 0, 1, &rates, send_side(2_000_000, s(3350))), 0);
    }

    #[test]
    fn a_layer_is_kept_while_the_estimate_is_within_keep_percent_of_it() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_millis(n);
        let rates = [100_000, 400_000, 1_200_000];
        let mut st = LayerState::new(t0);
        // On layer 1: an estimate at 92.5 % of it keeps it, one at 87.5 % does not.
        assert_eq!(st.decide(s(1200), 2, 1, &rates, send_side(370_000, s(1100))), 1);
        assert_eq!(st.decide(s(1300), 2, 1, &rates, send_side(350_000, s(1250))), 0);
        // Not above the preference, nor for a layer that stopped.
        assert_eq!(st.decide(s(1400), 0, 1, &rates, send_side(399_000, s(1350))), 0);
        assert_eq!(st.decide(s(1500), 2, 1, &[100_000, 0, 1_200_000], send_side(399_000, s(1450))), 0);
        // Only the current layer is kept: a higher one needs the full estimate.
        assert_eq!(st.decide(s(1600), 2, 0, &rates, send_side(370_000, s(1550))), 0);
    }

    #[test]
    fn send_side_estimates_settle_sooner_and_probe_instead_of_trying_blindly() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_millis(n);
        let rates = [100_000, 400_000, 1_200_000];
        let mut st = LayerState::new(t0);
        // Counts after SEND_SIDE_SETTLE (a REMB of the same age would not).
        assert_eq!(st.decide(s(1200), 2, 2, &rates, remb((500_000, s(1100)))), 2);
        assert_eq!(st.decide(s(1200), 2, 2, &rates, send_side(500_000, s(1100))), 1);
        // Held at 1 with headroom: no blind try, however long; a probe for layer 2 instead.
        let late = s(1200) + UP_TRY_AFTER * 3;
        assert_eq!(st.decide(late, 2, 1, &rates, send_side(500_000, late)), 1);
        assert_eq!(st.probe_for(2, 1, 1, &rates, send_side(500_000, late)), Some(1_200_000));
        // Not while switching down (target != current), not on REMB, not at the top or the
        // preference, not when the estimate already covers the next layer.
        assert_eq!(st.probe_for(2, 2, 1, &rates, send_side(500_000, late)), None);
        assert_eq!(st.probe_for(2, 1, 1, &rates, remb((500_000, late))), None);
        assert_eq!(st.probe_for(2, 2, 2, &rates, send_side(500_000, late)), None);
        assert_eq!(st.probe_for(1, 1, 1, &rates, send_side(200_000, late)), None);
        assert_eq!(st.probe_for(2, 1, 1, &rates, send_side(1_300_000, late)), None);
        assert_eq!(st.probe_for(2, 0, 0, &[100_000, 0, 1_200_000], send_side(200_000, late)), Some(1_200_000), "inactive layer skipped");
        // Not on estimates from the first PROBE_AFTER_DOWN after a move down.
        let mut down = LayerState::new(t0);
        assert_eq!(down.decide(late, 2, 2, &rates, send_side(500_000, late)), 1);
        let soon = late + PROBE_AFTER_DOWN - Duration::from_millis(100);
        assert_eq!(down.probe_for(2, 1, 1, &rates, send_side(500_000, soon)), None);
        let after = late + PROBE_AFTER_DOWN;
        assert_eq!(down.probe_for(2, 1, 1, &rates, send_side(500_000, after)), Some(1_200_000));
        // A successful probe raised the estimate: up at once, and it settles for 1 s only.
        let t = late + Duration::from_millis(300);
        assert_eq!(st.decide(t, 2, 1, &rates, send_side(1_400_000, t)), 2);
        assert_eq!(st.decide(t + Duration::from_millis(500), 2, 2, &rates, send_side(500_000, t + Duration::from_millis(500))), 2, "settling");
        let t = t + SEND_SIDE_SETTLE + Duration::from_millis(100);
        assert_eq!(st.decide(t, 2, 2, &rates, send_side(500_000, t)), 1, "a low estimate after settling moves it down");
    }
}
