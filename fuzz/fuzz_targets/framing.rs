//! RFC 4571 deframer (framing.rs, fed by every ICE-TCP connection): no panic on arbitrary
//! bytes split anywhere; the frames out never exceed the limit and the partial frame held
//! stays bounded; splitting the stream differently never changes what comes out (frames and
//! error); encoding the frames again gives back the stream's consumed prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pysfu_native::framing::{self, Deframer};

/// Frames and final result of feeding `stream` in pieces of the given sizes.
fn run(stream: &[u8], max: usize, cuts: &[u8]) -> (Vec<Vec<u8>>, Result<(), framing::FrameError>, usize) {
    let mut d = Deframer::new(max);
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    let mut result = Ok(());
    while !rest.is_empty() {
        let n = if cuts.is_empty() { rest.len() } else { (usize::from(cuts[i % cuts.len()]) + 1).min(rest.len()) };
        i += 1;
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        let r = d.feed(piece, |f| {
            assert!(!f.is_empty() && f.len() <= max);
            frames.push(f.to_vec());
        });
        assert!(d.buffered() <= 2 + max);
        if r.is_err() {
            result = r;
            break;
        }
    }
    (frames, result, d.buffered())
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else { return };
    let max = usize::from(m) * 16 + 1;
    let ncuts = rest.first().map_or(0, |&c| usize::from(c % 8)).min(rest.len());
    let (cuts, stream) = rest.split_at(ncuts);
    let whole = run(stream, max, &[]);
    let split = run(stream, max, cuts);
    assert_eq!(whole.0, split.0);
    assert_eq!(whole.1, split.1);
    if whole.1.is_ok() {
        assert_eq!(whole.2, split.2);
        // Re-encoding the frames gives the stream minus the partial frame left over.
        let mut again = Vec::new();
        for f in &whole.0 {
            framing::encode(f, &mut again).expect("frames fit a 16-bit length");
        }
        assert_eq!(&again[..], &stream[..stream.len() - whole.2]);
    }
});
