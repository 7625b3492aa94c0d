//! A fast hasher for maps keyed by handles (integers the control plane assigns, never chosen by
//! a remote peer): the fan-out loop looks up every consumer and its transport per packet, and
//! SipHash (std's default, built to resist chosen keys) costs several times a multiply-rotate.
//! Maps keyed by what a peer sends (addresses, SSRCs, ufrags) keep std's hasher.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-rotate hasher (the FxHash construction) over the written words.
#[derive(Default, Clone, Copy)]
pub struct HandleHasher(u64);

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl Hasher for HandleHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(26) ^ i).wrapping_mul(K);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The product's top bits (hashbrown's 7-bit tag) are well mixed; its low bits (the
        // bucket index) take every value for consecutive handles since K is odd.
        self.0
    }
}

/// A HashMap keyed by control-plane handles.
pub type HandleMap<V> = HashMap<u64, V, BuildHasherDefault<HandleHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_small_handles_spread_over_buckets() {
        let mut m: HandleMap<u64> = HandleMap::default();
        for h in 0..10_000u64 {
            m.insert(h, h * 2);
        }
        assert!((0..10_000u64).all(|h| m[&h] == h * 2));
        // Low 7 and top 7 bits both vary across consecutive handles.
        let hash = |h: u64| {
            let mut s = HandleHasher::default();
            s.write_u64(h);
            s.finish()
        };
        let tops: std::collections::HashSet<u64> = (0..1000).map(|h| hash(h) >> 57).collect();
        let lows: std::collections::HashSet<u64> = (0..1000).map(|h| hash(h) & 0x7f).collect();
        assert!(tops.len() > 100 && lows.len() > 100, "{} {}", tops.len(), lows.len());
    }
}
