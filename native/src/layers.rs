//! Which simulcast layer (encoding) a consumer receives.
//!
//! The target is the highest layer with traffic that is not above the viewer's preference and
//! whose measured ingress bitrate fits the viewer's bandwidth estimate (bwe.rs), the lowest
//! active one if none fits. Two refinements make a REMB-based estimate usable:
//!
//! - Chrome's receive-side estimate never rises above about 1.5× what it receives and climbs
//!   only gradually (AIMD), so an estimate taken while a viewer got a lower layer, or shortly
//!   after it moved up, says little about the layer it gets now (measured with Chromium:
//!   after a move up, its next REMB was still below the new layer's rate). An estimate only
//!   counts if it arrived at least [`SETTLE`] after the consumer's start or last move up.
//! - A viewer held below its preference by the estimate tries the next layer up after
//!   [`UP_TRY_AFTER`] when the estimate leaves [`HEADROOM_PERCENT`] headroom over the layer
//!   it receives; if that is too much, its next (lower) estimate moves it back down.
//!
//! Sans-IO and allocation-free: times and rates in, a layer index out.

use std::time::{Duration, Instant};

/// Estimates arriving sooner than this after a consumer starts or moves up are not used.
pub const SETTLE: Duration = Duration::from_secs(5);
/// How long a viewer stays below its preference because of its estimate before trying up.
pub const UP_TRY_AFTER: Duration = Duration::from_secs(8);
/// Estimate over the current layer's bitrate, in percent, needed to try the next layer up.
pub const HEADROOM_PERCENT: u64 = 120;

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
    /// Estimates from before this instant are ignored (the consumer moved up since).
    estimate_valid_after: Instant,
    /// Since when the estimate keeps the consumer below its preference.
    held_since: Option<Instant>,
}

impl LayerState {
    pub fn new(now: Instant) -> Self {
        LayerState { estimate_valid_after: now + SETTLE, held_since: None }
    }

    /// The preference went up: decide on fresh estimates only.
    pub fn preference_raised(&mut self, now: Instant) {
        self.estimate_valid_after = now + SETTLE;
        self.held_since = None;
    }

    /// The layer to receive now. `current`: the layer being forwarded; `estimate`: the
    /// viewer's estimate and when it was last updated.
    pub fn decide(&mut self, now: Instant, preferred: usize, current: usize, bitrates: &[u64], estimate: Option<(u64, Instant)>) -> usize {
        let est = estimate.filter(|(_, at)| *at > self.estimate_valid_after).map(|(e, _)| e);
        let best = select_layer(preferred, bitrates, None);
        let mut target = select_layer(preferred, bitrates, est);
        if target < best {
            let since = *self.held_since.get_or_insert(now);
            let current_rate = bitrates.get(current).copied().unwrap_or(0);
            let headroom = est.is_some_and(|e| e.saturating_mul(100) >= current_rate.saturating_mul(HEADROOM_PERCENT));
            if target == current && headroom && now.saturating_duration_since(since) >= UP_TRY_AFTER {
                if let Some(next) = (current + 1..=best).find(|&i| bitrates[i] > 0) {
                    target = next;
                }
                self.held_since = None;
            }
        } else {
            self.held_since = None;
        }
        if target > current {
            self.estimate_valid_after = now + SETTLE;
        }
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(st.decide(s(10), 2, 2, &rates, Some((500_000, t0 + SETTLE / 2))), 2);
        // A fresh low estimate moves it down.
        assert_eq!(st.decide(s(20), 2, 2, &rates, Some((500_000, s(15)))), 1);
        // Held at 1 (the estimate, 500k, leaves 25 % headroom over 400k)...
        assert_eq!(st.decide(s(1000), 2, 1, &rates, Some((500_000, s(15)))), 1);
        // ... until UP_TRY_AFTER has passed: then one layer up, and the old estimate is void.
        let later = s(20) + UP_TRY_AFTER;
        assert_eq!(st.decide(later, 2, 1, &rates, Some((500_000, s(15)))), 2);
        assert_eq!(st.decide(later + Duration::from_millis(50), 2, 2, &rates, Some((500_000, s(15)))), 2);
        // A low estimate soon after the try does not count; one after SETTLE moves it down.
        let t = later + SETTLE / 2;
        assert_eq!(st.decide(t, 2, 2, &rates, Some((450_000, t))), 2);
        let t = later + SETTLE + Duration::from_millis(100);
        assert_eq!(st.decide(t, 2, 2, &rates, Some((450_000, t))), 1);
        // Without headroom there is no try.
        let mut st = LayerState::new(t0);
        assert_eq!(st.decide(s(20), 2, 2, &rates, Some((410_000, s(15)))), 1);
        assert_eq!(st.decide(s(20) + UP_TRY_AFTER * 2, 2, 1, &rates, Some((410_000, s(15)))), 1);
        // An estimate that fits moves it up at once.
        assert_eq!(st.decide(s(30), 2, 1, &rates, Some((2_000_000, s(25)))), 2);
        // A raised preference voids older estimates.
        let mut st = LayerState::new(t0);
        assert_eq!(st.decide(s(20), 0, 0, &rates, Some((300_000, s(15)))), 0);
        st.preference_raised(s(30));
        assert_eq!(st.decide(s(40), 2, 0, &rates, Some((300_000, s(15)))), 2);
        assert_eq!(st.decide(s(50), 2, 2, &rates, Some((300_000, s(45)))), 2, "settling");
    }
}
