//! HMAC-SHA1 several messages at a time (`hmac_sha1::tags`) against the `hmac` crate, one
//! message at a time: any number of jobs, any keys, head lengths and suffixes (up to
//! `MAX_SUFFIX`); the lanes of a group may part at any block. Nothing panics, every tag matches.
#![no_main]

use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use pysfu_native::hmac_sha1::{tags, HmacSha1Key, Job, MAX_SUFFIX, TAG_LEN};
use sha1::Sha1;

fuzz_target!(|input: &[u8]| {
    let Some((&count, mut rest)) = input.split_first() else { return };
    let count = (count % 10) as usize;
    // Per job: key length, head length (scaled so heads of several blocks occur), suffix
    // length; then the bytes are taken from what is left, cyclically.
    let mut shapes = Vec::new();
    for _ in 0..count {
        let Some((s, r)) = rest.split_first_chunk::<3>() else { return };
        shapes.push(((s[0] % 90) as usize, s[1] as usize * 5 % 1500, (s[2] as usize) % (MAX_SUFFIX + 1)));
        rest = r;
    }
    let pool: Vec<u8> = if rest.is_empty() { vec![0] } else { rest.to_vec() };
    let bytes = |at: usize, len: usize| -> Vec<u8> { (0..len).map(|i| pool[(at + i) % pool.len()]).collect() };
    let mut owned = Vec::new();
    for (i, &(k, h, s)) in shapes.iter().enumerate() {
        owned.push((bytes(i, k), bytes(i * 7, h), bytes(i * 13, s)));
    }
    let keys: Vec<HmacSha1Key> = owned.iter().map(|(k, _, _)| HmacSha1Key::new(k)).collect();
    let jobs: Vec<Job<'_>> =
        owned.iter().zip(&keys).map(|((_, h, s), key)| Job { key, head: h, suffix: s }).collect();
    let mut out = vec![[0u8; TAG_LEN]; jobs.len()];
    tags(&jobs, &mut out);
    for (i, (key, head, suffix)) in owned.iter().enumerate() {
        let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("any key length");
        m.update(head);
        m.update(suffix);
        let want: [u8; TAG_LEN] = m.finalize().into_bytes().into();
        assert_eq!(out[i], want, "job {i} of {count}");
        assert_eq!(keys[i].tag(head, suffix), want, "job {i} alone");
    }
});
