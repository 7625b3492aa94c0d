//! Simulcast layer selection (layers.rs) against its rules, with arbitrary preferences,
//! per-layer bitrates (1 to 4 layers: a producer has at least one encoding), estimates and
//! times: never above the preference, an active layer when one is known, the highest active
//! one that fits the estimate (else the lowest active), and `decide` never panics nor goes
//! above the preferred layer.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pysfu_native::bwe::Estimate;
use pysfu_native::layers::{select_layer, LayerState};

fn check_select(preferred: usize, rates: &[u64], estimate: Option<u64>) -> usize {
    let got = select_layer(preferred, rates, estimate);
    let top = preferred.min(rates.len() - 1);
    assert!(got <= top, "{got} above the preference {top}");
    let active: Vec<usize> = (0..=top).filter(|&i| rates[i] > 0).collect();
    let Some(&lowest) = active.first() else {
        assert_eq!(got, top, "nothing active: the preference");
        return got;
    };
    assert!(rates[got] > 0, "an inactive layer {got} of {rates:?}");
    let fits = |i: usize| estimate.is_none_or(|e| rates[i] <= e);
    let want = active.iter().rev().copied().find(|&i| fits(i)).unwrap_or(lowest);
    assert_eq!(got, want, "preferred {preferred}, rates {rates:?}, estimate {estimate:?}");
    got
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let layers = 1 + (data[0] & 3) as usize;
    let t0 = Instant::now();
    let mut now = t0;
    let mut state = LayerState::new(t0);
    let mut current = 0usize;
    for chunk in data[1..].chunks_exact(8).take(500) {
        let preferred = (chunk[0] & 7) as usize;
        // Rates in steps of 100 kbit/s (0 = no traffic); estimate the same, or none.
        let rates: Vec<u64> = (0..layers).map(|i| chunk[1 + i] as u64 % 16 * 100_000).collect();
        let estimate = (chunk[5] != 0).then(|| (chunk[5] as u64 % 32) * 100_000);
        check_select(preferred, &rates, estimate);
        now += Duration::from_millis(chunk[6] as u64 * 50);
        if chunk[7] & 0x80 != 0 {
            state.preference_raised(now);
        }
        let at = now.checked_sub(Duration::from_millis((chunk[7] & 0x7f) as u64 * 100)).unwrap_or(t0);
        // From transport-cc feedback (probes, quick follow-up) or REMB: both rules run.
        let send_side = chunk[6] & 1 != 0;
        let estimate = estimate.map(|bitrate| Estimate { bitrate, at, send_side });
        let next = state.decide(now, preferred, current, &rates, estimate);
        assert!(next <= preferred.min(layers - 1), "decide went to {next} above the preference");
        current = next;
    }
});
