//! Decode target selection by the dependency descriptor (dd_filter.rs): any sequence of
//! descriptors (arbitrary bytes parsed by a DdStream), RTP timestamps, preferences, bandwidth
//! estimates and restarts never panics; the first packet of a forwarded frame whose DTIs are
//! its template's, with an active decode target to choose from, is within the layers the
//! filter says it forwards (later packets of a frame number share its first packet's fate,
//! whatever they claim), and the marker is only ever added at the end of a frame.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pysfu_native::bwe::Estimate;
use pysfu_native::dd::{DdStream, MAX_TEMPLATES};
use pysfu_native::dd_filter::{DdFilter, ALL};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut st = DdStream::new();
    let mut f = DdFilter::new(ALL, ALL, t0);
    let mut now = t0;
    let mut ts = 0u32;
    let mut last_frame: Option<u16> = None;
    let mut rest = data;
    // Records: [op, arg, len, descriptor (len bytes)].
    while let [op, arg, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (ext, next) = tail.split_at(n);
        rest = next;
        now += Duration::from_millis(u64::from(*arg) * 8);
        match op & 3 {
            0 => {
                let spatial = if arg & 0x80 != 0 { ALL } else { arg & 7 };
                f.set_preference(now, spatial, (arg >> 3) & 7);
            }
            1 => {
                let e = Estimate { bitrate: u64::from(*arg) * 10_000, at: now, send_side: arg % 2 == 0 };
                f.follow_estimate(now, Some(e));
                let _ = f.probe_for(Some(e));
                let _ = f.needs_key_frame();
            }
            2 if op & 4 != 0 => f.sync(),
            _ => {
                let Ok(d) = st.parse(ext) else { continue };
                let s = st.structure().expect("an accepted descriptor has a structure");
                ts = ts.wrapping_add(((*op as i8 as i32) * 300) as u32);
                f.count(&d, s, ext.len());
                let first = last_frame != Some(d.frame_number);
                last_frame = Some(d.frame_number);
                let Some(mark) = f.admit(&d, s, ts) else { continue };
                assert!(!mark || d.end_of_frame, "marker added inside a frame");
                let index = (usize::from(d.template_id) + MAX_TEMPLATES - usize::from(s.template_id_offset)) % MAX_TEMPLATES;
                let template_dtis = s.templates.get(index).map(|t| t.dtis);
                let active = (0..s.target_layers.len().min(32)).any(|i| d.active_targets & (1 << i) != 0);
                if let (Some((cs, ct)), true) = (f.current_layers(), first && active && template_dtis == Some(d.dtis)) {
                    assert!(d.spatial <= cs && d.temporal <= ct, "frame ({}, {}) above ({cs}, {ct}): {d:?}", d.spatial, d.temporal);
                }
            }
        }
    }
});
