//! STUN peek (the only STUN parsing on the I/O thread): no panic, and what it returns lies
//! inside the datagram and agrees with itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pysfu_native::stun_peek;

fuzz_target!(|data: &[u8]| {
    let ty = stun_peek::message_type(data);
    let user = stun_peek::username(data);
    let ufrag = stun_peek::local_ufrag(data);
    if user.is_some() || ufrag.is_some() {
        assert!(ty.is_some());
    }
    if let Some(u) = user {
        let base = data.as_ptr() as usize;
        let p = u.as_ptr() as usize;
        assert!(p >= base + 20 && p + u.len() <= base + data.len());
    }
    if let Some(f) = ufrag {
        assert_eq!(ty, Some(stun_peek::BINDING_REQUEST));
        assert!(!f.contains(':'));
        assert!(user.is_some_and(|u| u.starts_with(f.as_bytes())));
    }
});
