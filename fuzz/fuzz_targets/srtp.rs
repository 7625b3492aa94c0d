//! SRTP/SRTCP for each profile with fixed keys: unprotecting arbitrary bytes never panics
//! and never succeeds (a forgery would be a crypto failure); protect → unprotect gives the
//! packet back; the same packet again is a replay; a flipped tag bit fails authentication.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pysfu_native::srtp::{Profile, SrtpContext, SrtpError};

const PROFILES: [Profile; 3] = [Profile::AesCm128HmacSha1_80, Profile::AeadAes128Gcm, Profile::AeadAes256Gcm];

fn ctx(p: Profile) -> SrtpContext {
    let key: Vec<u8> = (0..p.key_len() as u8).collect();
    let salt: Vec<u8> = (0..p.salt_len() as u8).map(|x| x.wrapping_mul(7)).collect();
    SrtpContext::new(p, &key, &salt).expect("fixed keys are valid")
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, data)) = input.split_first() else { return };
    let p = PROFILES[(sel % 3) as usize];
    let rtcp = sel & 0x80 != 0;

    // Arbitrary bytes at a receiver.
    let mut rx = ctx(p);
    let mut pkt = data.to_vec();
    let r = if rtcp { rx.unprotect_rtcp(&mut pkt) } else { rx.unprotect_rtp(&mut pkt) };
    assert!(r.is_err(), "random bytes authenticated");

    // Round trip.
    let mut tx = ctx(p);
    let mut rx = ctx(p);
    let mut prot = data.to_vec();
    let r = if rtcp { tx.protect_rtcp(&mut prot) } else { tx.protect_rtp(&mut prot) };
    if r.is_err() {
        return;
    }
    let overhead = if rtcp { p.rtcp_overhead() } else { p.rtp_overhead() };
    assert_eq!(prot.len(), data.len() + overhead);
    let protected = prot.clone();
    let r = if rtcp { rx.unprotect_rtcp(&mut prot) } else { rx.unprotect_rtp(&mut prot) };
    assert_eq!(r, Ok(()));
    assert_eq!(prot, data);
    let mut again = protected.clone();
    let r = if rtcp { rx.unprotect_rtcp(&mut again) } else { rx.unprotect_rtp(&mut again) };
    assert_eq!(r, Err(SrtpError::Replay));
    // A flipped bit in the tag, on a fresh receiver: authentication fails.
    let mut rx2 = ctx(p);
    let mut bad = protected;
    *bad.last_mut().expect("non-empty") ^= 1;
    let r = if rtcp { rx2.unprotect_rtcp(&mut bad) } else { rx2.unprotect_rtp(&mut bad) };
    assert_eq!(r, Err(SrtpError::AuthFailed));
});
