//! RFC 7675 consent in the engine: checks on the selected tuple answered here, everything
//! else that passes integrity handed to Python's ICE, and consent lost after the timeout.

use super::*;

const CONTROLLED: u16 = 0x8029;
const NOMINATION: u16 = 0xC001;

fn check(h: Handle) -> Vec<u8> {
    stun_check::build_binding_request(&format!("ufrag{h}:remote"), format!("pw{h}").as_bytes(), true)
}

/// The XOR-MAPPED-ADDRESS of a Binding success response (IPv4), decoded.
fn mapped(resp: &[u8]) -> SocketAddr {
    assert_eq!(&resp[..2], &[0x01, 0x01], "a Binding success response");
    assert_eq!(&resp[20..22], &[0x00, 0x20], "XOR-MAPPED-ADDRESS first");
    let port = u16::from_be_bytes([resp[26], resp[27]]) ^ 0x2112;
    let ip: Vec<u8> = resp[28..32].iter().zip([0x21, 0x12, 0xA4, 0x42]).map(|(a, b)| a ^ b).collect();
    SocketAddr::from(([ip[0], ip[1], ip[2], ip[3]], port))
}

#[test]
fn a_consent_check_on_the_selected_tuple_is_answered_by_the_engine() {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    connect(&mut r, now, 2, 2000, &mut out);
    out.transmits.clear();
    let req = check(2);
    assert!(r.handle_datagram(now, addr(2000), &req, &mut out));
    assert!(!r.has_upcalls(), "Python's ICE has nothing to do");
    assert_eq!(out.transmits.len(), 1);
    let resp = &out.transmits[0];
    assert_eq!(resp.dest, addr(2000));
    assert_eq!(&resp.buf[8..20], &req[8..20], "same transaction id");
    assert_eq!(mapped(&resp.buf), addr(2000).addr);
    // Integrity keyed with the transport's password, FINGERPRINT right.
    assert_eq!(stun_check::verify(&resp.buf, &stun_check::IceKey::new(b"pw2").unwrap()), Ok(()));
    assert!(stun_check::verify(&resp.buf, &stun_check::IceKey::new(b"pw3").unwrap()).is_err());
    assert!(stats(&r, 2).contains(&("stunAnswered", StatValue::Int(1))));
    assert!(stats(&r, 2).contains(&("stunReceived", StatValue::Int(0))));
}

#[test]
fn what_may_change_ice_state_still_goes_to_python() {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    connect(&mut r, now, 2, 2000, &mut out);
    out.transmits.clear();
    // Another tuple (a network change, a new candidate pair): Python validates it.
    r.handle_datagram(now, addr(2001), &check(2), &mut out);
    // A role conflict and a renomination on the selected tuple: Python answers those.
    for extra in [(CONTROLLED, &[1u8; 8][..]), (NOMINATION, &[0, 0, 0, 2][..])] {
        let req = stun_check::build_binding_request_with("ufrag2:remote", b"pw2", true, &[extra]);
        r.handle_datagram(now, addr(2000), &req, &mut out);
    }
    // No FINGERPRINT: Python answers (and refuses) it as before.
    let req = stun_check::build_binding_request("ufrag2:remote", b"pw2", false);
    r.handle_datagram(now, addr(2000), &req, &mut out);
    let up = r.take_upcalls();
    assert_eq!(up.len(), 4);
    assert!(up.iter().all(|u| u.kind == UpKind::Stun && u.transport == 2));
    assert!(out.transmits.is_empty());
    // A tuple bound but not selected (validated only) also goes up.
    r.bind_tuple(now, 2, addr(2002), false, &mut out).unwrap();
    r.handle_datagram(now, addr(2002), &check(2), &mut out);
    assert_eq!(r.take_upcalls().len(), 1);
}

#[test]
fn consent_is_lost_after_the_timeout_without_a_valid_check_and_told_once() {
    let t0 = Instant::now();
    let mut r = router(t0);
    let mut out = Output::new();
    connect(&mut r, t0, 2, 2000, &mut out);
    connect(&mut r, t0, 3, 3000, &mut out);
    r.set_consent_timeout(Some(Duration::from_secs(30)));
    let at = |s: f64| t0 + Duration::from_secs_f64(s);
    // Nothing heard from transport 3 yet: its consent cannot expire (connecting has its own
    // timeout, in Python). Transport 2 checks at 0 and 20 s (the second one answered by
    // Python: its source is a new tuple); a check with a wrong password at 45 s counts not.
    r.handle_datagram(at(0.0), addr(2000), &check(2), &mut out);
    r.handle_datagram(at(20.0), addr(2001), &check(2), &mut out);
    r.take_upcalls();
    let bad = stun_check::build_binding_request("ufrag2:remote", b"guess", true);
    let mut lost = Vec::new();
    let mut t = 0.0;
    while t < 60.0 {
        if (45.0..45.1).contains(&t) {
            r.handle_datagram(at(t), addr(2000), &bad, &mut out);
        }
        r.handle_timeout(at(t), &mut out);
        lost.extend(r.take_upcalls().into_iter().filter(|u| u.kind == UpKind::ConsentLost).map(|u| (t, u.transport, u.from)));
        t += 0.1;
    }
    assert_eq!(lost.len(), 1, "{lost:?}");
    let (when, h, from) = lost[0];
    assert_eq!((h, from), (2, addr(2000)));
    assert!((50.0..50.0 + CONSENT_SWEEP.as_secs_f64() + 0.15).contains(&when), "lost at {when}");
}

#[test]
fn consent_without_a_timeout_never_expires() {
    let t0 = Instant::now();
    let mut r = router(t0);
    let mut out = Output::new();
    connect(&mut r, t0, 2, 2000, &mut out);
    r.set_consent_timeout(None);
    r.handle_datagram(t0, addr(2000), &check(2), &mut out);
    for s in [1u64, 100, 10_000] {
        r.handle_timeout(t0 + Duration::from_secs(s), &mut out);
    }
    assert!(r.take_upcalls().iter().all(|u| u.kind != UpKind::ConsentLost));
}
