//! SeqManager against a model: in-order inputs map to consecutive outputs (lost inputs
//! leave gaps, dropped ones do not), sync continues right after the highest output, a
//! re-sent input maps to its earlier output or is refused, nothing panics.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use pysfu_native::seq::SeqManager;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let initial = u16::from_be_bytes([data[0], data[1]]);
    let mut next_in = u16::from_be_bytes([data[2], data[3]]);
    let mut sm = SeqManager::new(initial);
    // Output slot of the last in-order input (forwarded or lost); None before the first.
    let mut slot: Option<u16> = None;
    let mut max_emitted: Option<u16> = None;
    // Input → output since the last sync (inputs advance < 2^14 in a run: no aliasing).
    let mut seen: HashMap<u16, u16> = HashMap::new();
    let mut cur: Option<u16> = None;
    for &op in data[4..].iter().take(4000) {
        let arg = (op & 0x3f) as u16;
        match op >> 6 {
            // Forward the next input, `gap` inputs after the previous one were lost.
            0 | 1 => {
                let gap = arg % 4;
                let input = next_in.wrapping_add(gap);
                let out = sm.input(input).expect("newer input is forwarded");
                let want = match slot {
                    None => initial,
                    Some(s) => s.wrapping_add(gap + 1),
                };
                assert_eq!(out, want, "input {input}");
                slot = Some(out);
                max_emitted = Some(out);
                seen.insert(input, out);
                cur = Some(input);
                next_in = input.wrapping_add(1);
            }
            // Drop the next input on purpose (only once started).
            2 => {
                let gap = arg % 4;
                let input = next_in.wrapping_add(gap);
                sm.drop(input);
                if let Some(s) = slot {
                    slot = Some(s.wrapping_add(gap));
                    cur = Some(input);
                    next_in = input.wrapping_add(1);
                }
            }
            // Re-send an older input, or sync to a jump.
            _ => {
                if arg < 48 {
                    let Some(c) = cur else { continue };
                    let old = c.wrapping_sub(arg);
                    if let Some(out) = sm.input(old) {
                        if let Some(&o) = seen.get(&old) {
                            assert_eq!(out, o, "re-sent input {old}");
                        }
                    }
                } else if let Some(m) = max_emitted {
                    let jump = next_in.wrapping_add(arg * 997);
                    sm.sync(jump);
                    next_in = jump;
                    slot = Some(m);
                    seen.clear();
                    cur = None;
                }
            }
        }
    }
});
