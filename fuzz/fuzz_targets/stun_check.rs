//! STUN integrity check (stun_check.rs, run on the I/O thread before a request is queued for
//! Python): no panic on arbitrary bytes and keys; a request built with the key verifies and
//! one built with another key does not; the engine's answer to what verifies verifies too; arbitrary bytes never verify unless they carry a
//! correct HMAC (libFuzzer would have to find a SHA-1 collision).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pysfu_native::stun_check::{self, IceKey, Reject};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = (usize::from(n) % 40 + 1).min(rest.len());
    let (password, msg) = rest.split_at(n);
    let Some(key) = IceKey::new(password) else { return };
    // Arbitrary bytes (checked only for not panicking: a well-formed message that libFuzzer
    // grows around a valid HMAC is not impossible in principle, only in practice).
    // What passes is answered (a consent check on the selected tuple) with a response that
    // verifies under the same key.
    if stun_check::verify_request(msg, &key).is_ok() {
        let from = std::net::SocketAddr::from(([192, 0, 2, 1], u16::from(n as u8)));
        let mut resp = Vec::new();
        stun_check::binding_success(msg, from, &key, &mut resp);
        assert_eq!(stun_check::verify(&resp, &key), Ok(()));
    }
    // Round trip with a username taken from the input.
    let user: String = msg.iter().take(20).map(|b| char::from(b'a' + b % 26)).collect();
    let username = format!("u{user}:r");
    for fingerprint in [true, false] {
        let good = stun_check::build_binding_request(&username, password, fingerprint);
        assert_eq!(stun_check::verify_request(&good, &key).map(|c| c.plain), Ok(fingerprint));
        for from in [std::net::SocketAddr::from(([10, 1, 2, 3], 5000)), "[2001:db8::7]:9".parse().unwrap()] {
            let mut resp = Vec::new();
            stun_check::binding_success(&good, from, &key, &mut resp);
            assert_eq!(stun_check::verify(&resp, &key), Ok(()));
            assert_eq!(&resp[8..20], &good[8..20]);
        }
        let mut other = password.to_vec();
        other.push(b'!');
        let other = IceKey::new(&other).expect("non-empty");
        assert_eq!(stun_check::verify(&good, &other), Err(Reject::BadIntegrity));
        // One flipped bit, outside the header's length and FINGERPRINT's type (either may
        // only take FINGERPRINT away, which is optional).
        if let Some(&b) = msg.first() {
            let mut bad = good.clone();
            let i = usize::from(b) % bad.len();
            let fp_type = if fingerprint { bad.len() - 8..bad.len() - 6 } else { 0..0 };
            if !fp_type.contains(&i) && !(2..4).contains(&i) {
                bad[i] ^= 1 << (msg.get(1).copied().unwrap_or(0) % 8);
                assert!(stun_check::verify(&bad, &key).is_err(), "bit flip at {i} still verifies");
            }
        }
    }
});
