//! VP9 SVC layer filter: any sequence of packets (arbitrary payloads, timestamps, markers,
//! key frame flags) and preference / estimate changes never panics, and a forwarded packet
//! never belongs to a spatial or temporal layer above the ones the filter says it forwards
//! (nor above the declared ones); a packet that had the marker keeps it.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pysfu_native::svc::{SvcFilter, Verdict};
use pysfu_native::vp9;

fuzz_target!(|data: &[u8]| {
    let Some((&head, mut rest)) = data.split_first() else { return };
    let t0 = Instant::now();
    let (spatial, temporal, ksvc) = (1 + (head & 3), 1 + ((head >> 2) & 3), head & 0x10 != 0);
    let mut f = SvcFilter::new(spatial, temporal, ksvc, t0);
    let mut now = t0;
    let mut ts = 0u32;
    // Records: [op, arg, len, payload (len bytes)].
    while let [op, arg, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (payload, next) = tail.split_at(n);
        rest = next;
        now += Duration::from_millis(*arg as u64 * 8);
        match op & 3 {
            0 => {
                f.set_preference(now, (*arg & 7) as usize, (arg & 0x80 == 0).then_some((arg >> 3) & 7));
            }
            1 => {
                f.decide(now, Some(pysfu_native::bwe::Estimate { bitrate: *arg as u64 * 10_000, at: now, send_side: *arg % 2 == 0 }));
            }
            _ => {
                let Ok(d) = vp9::parse(payload) else { continue };
                ts = ts.wrapping_add(((*op as i8 as i32) * 300) as u32);
                f.count(&d, payload.len());
                let marker = op & 4 != 0;
                let key = op & 8 != 0;
                if let Verdict::Forward { marker: m } = f.admit(&d, ts, marker, key) {
                    let cur = f.current().expect("forwarding means started");
                    let l = d.layer.unwrap_or_default();
                    assert!(l.sid <= cur.spatial && l.tid <= cur.temporal, "{l:?} above {cur:?}");
                    assert!(l.sid < spatial && l.tid < temporal, "undeclared layer forwarded");
                    assert!(m || !marker, "marker lost");
                }
            }
        }
    }
});
