//! STUN integrity, the upcall queue and tuple selection (a nominated tuple gets media only once proven).

use super::*;

#[test]
fn stun_goes_up_only_with_the_transports_password() {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    r.add_transport(7, "abcd", "secret7").unwrap();
    for fp in [true, false] {
        let stun = stun_check::build_binding_request("abcd:remote", b"secret7", fp);
        r.handle_datagram(now, addr(9), &stun, &mut out);
    }
    let up = r.take_upcalls();
    assert_eq!(up.len(), 2);
    assert_eq!((up[0].kind, up[0].transport, up[0].from), (UpKind::Stun, 7, addr(9)));
    // Right ufrag, wrong password; no integrity at all; unknown ufrag.
    let bad = stun_check::build_binding_request("abcd:remote", b"guess", true);
    r.handle_datagram(now, addr(9), &bad, &mut out);
    r.handle_datagram(now, addr(9), &stun_peek::build_binding_request("abcd:remote"), &mut out);
    let mut corrupt = stun_check::build_binding_request("abcd:remote", b"secret7", true);
    let n = corrupt.len();
    corrupt[n - 1] ^= 1; // fingerprint
    r.handle_datagram(now, addr(9), &corrupt, &mut out);
    assert!(!r.has_upcalls());
    assert_eq!(r.drops().get(DropReason::StunIntegrity), 3);
    assert!(stats(&r, 7).contains(&("stunRejected", StatValue::Int(3))));
    let stun = stun_check::build_binding_request("nope:remote", b"secret7", true);
    r.handle_datagram(now, addr(9), &stun, &mut out);
    assert_eq!(r.drops().get(DropReason::StunUnknown), 1);
    // DTLS only from a bound tuple.
    r.handle_datagram(now, addr(9), &[22, 254, 253, 0], &mut out);
    assert_eq!(r.drops().get(DropReason::UnknownSource), 1);
    r.bind_tuple(now, 7, addr(9), false, &mut out).unwrap();
    r.handle_datagram(now, addr(9), &[22, 254, 253, 0], &mut out);
    let up = r.take_upcalls();
    assert_eq!(up[0].kind, UpKind::Dtls);
    // STUN without a ufrag from a bound tuple: that transport's failed check.
    r.handle_datagram(now, addr(9), &stun_peek::build_binding_request(":x"), &mut out);
    assert_eq!(r.drops().get(DropReason::StunIntegrity), 4);
    assert!(matches!(r.add_transport(8, "efgh", ""), Err(RouterError::Invalid(_))));
}

#[test]
fn one_transports_flood_leaves_room_in_the_queue_for_others() {
    let now = Instant::now();
    let mut r = router(now);
    let mut out = Output::new();
    r.add_transport(7, "abcd", "secret7").unwrap();
    r.add_transport(8, "efgh", "secret8").unwrap();
    r.bind_tuple(now, 7, addr(9), false, &mut out).unwrap();
    // A flood of DTLS from transport 7's tuple and of valid STUN for it.
    let good7 = stun_check::build_binding_request("abcd:remote", b"secret7", true);
    for i in 0..UP_QUEUE_CAP {
        if i % 2 == 0 {
            r.handle_datagram(now, addr(9), &[22, 254, 253, 0], &mut out);
        } else {
            r.handle_datagram(now, addr(10), &good7, &mut out);
        }
    }
    assert_eq!(r.drops().get(DropReason::UpQueueFull), (UP_QUEUE_CAP - UP_QUEUE_PER_TRANSPORT as usize) as u64);
    assert!(stats(&r, 7).contains(&("upQueueFull", StatValue::Int((UP_QUEUE_CAP - 64) as u64))));
    // The newcomer's handshake still gets through.
    let good8 = stun_check::build_binding_request("efgh:remote", b"secret8", true);
    r.handle_datagram(now, addr(20), &good8, &mut out);
    let up = r.take_upcalls();
    assert_eq!(up.len(), UP_QUEUE_PER_TRANSPORT as usize + 1);
    assert_eq!(up.back().unwrap().transport, 8);
    // Draining gives transport 7 its share back.
    r.handle_datagram(now, addr(9), &[22, 254, 253, 0], &mut out);
    assert_eq!(r.take_upcalls().len(), 1);
    // Many transports flooding at once: the total stays bounded.
    for h in 100..200u64 {
        r.add_transport(h, &format!("u{h}"), "pw").unwrap();
        let req = stun_check::build_binding_request(&format!("u{h}:x"), b"pw", true);
        for _ in 0..UP_QUEUE_PER_TRANSPORT + 5 {
            r.handle_datagram(now, addr(30), &req, &mut out);
        }
    }
    assert_eq!(r.take_upcalls().len(), UP_QUEUE_CAP);
}

#[test]
fn a_nominated_tuple_gets_media_only_once_proven() {
    let mut room = room(false);
    let out = room.send(true);
    assert!(dests(&out).contains(&2000));
    // A spoofed Binding request with viewer 2's credentials from a victim's address
    // (6666): ICE validates and nominates it.
    let mut out = Output::new();
    room.r.bind_tuple(room.now, 2, addr(6666), false, &mut out).unwrap();
    room.r.bind_tuple(room.now, 2, addr(6666), true, &mut out).unwrap();
    // The same for the host (7777): feedback toward the sender must not move either.
    room.r.bind_tuple(room.now, 1, addr(7777), true, &mut out).unwrap();
    assert!(out.transmits.is_empty());
    assert_eq!(stat_str(&room.r, 2, "selectedTuple"), addr(2000).to_string());
    assert_eq!(stat_str(&room.r, 2, "nominatedTuple"), addr(6666).to_string());
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.extend(dests(&room.send(false)));
    }
    assert!(seen.contains(&2000) && !seen.contains(&6666) && !seen.contains(&7777), "{seen:?}");
    // The viewer (at its real address) NACKs and asks for a key frame: the answers go to
    // 2000 and the PLI to the host's proven tuple 1000.
    let mut v2 = peer(2).0;
    let later = room.now + Duration::from_secs(2);
    let base = {
        let out = room.send(false);
        let t = out.transmits.iter().find(|t| t.dest.port() == 2000).unwrap();
        room.recv(t).2
    };
    let mut out = Output::new();
    room.r.handle_datagram(later, addr(2000), &viewer_rtcp(&mut v2, 0xAAAA, &[base, base.wrapping_sub(1)], true), &mut out);
    let d = dests(&out);
    assert!(d.contains(&2000) && d.contains(&1000) && !d.contains(&6666) && !d.contains(&7777), "{d:?}");
    // Reports a second later: SR to 2000, RR to 1000.
    let mut out = Output::new();
    room.r.handle_timeout(later, &mut out);
    room.r.handle_timeout(later + Duration::from_secs(2), &mut out);
    let d = dests(&out);
    assert!(!d.contains(&6666) && !d.contains(&7777), "{d:?}");
    assert_eq!(stat_str(&room.r, 2, "selectedTuple"), addr(2000).to_string());
    // Forged or unauthenticated SRTCP from the victim's address proves nothing.
    let forged = viewer_rtcp(&mut ctx(99), 0xAAAA, &[], false);
    let mut out = Output::new();
    room.r.handle_datagram(later, addr(6666), &forged, &mut out);
    assert_eq!(room.r.drops().get(DropReason::SrtcpAuth) + room.r.drops().get(DropReason::SrtcpReplay), 1);
    assert_eq!(stat_str(&room.r, 2, "selectedTuple"), addr(2000).to_string());
    // Re-nominating the proven tuple (the real viewer's next check) keeps it.
    room.r.bind_tuple(later, 2, addr(2000), true, &mut out).unwrap();
    assert_eq!(stat_str(&room.r, 2, "nominatedTuple"), addr(2000).to_string());
    // A real move (the peer's network changed): nominated, then its authenticated SRTCP
    // from the new address makes it the sending tuple.
    room.r.bind_tuple(later, 2, addr(2001), true, &mut out).unwrap();
    assert!(!dests(&room.send(false)).contains(&2001));
    let mut out = Output::new();
    room.r.handle_datagram(later, addr(2001), &viewer_rtcp(&mut v2, 0xAAAA, &[], false), &mut out);
    assert_eq!(stat_str(&room.r, 2, "selectedTuple"), addr(2001).to_string());
    let d = dests(&room.send(false));
    assert!(d.contains(&2001) && !d.contains(&2000), "{d:?}");
    // An authenticated packet from a proven tuple that is not the nominated one (2000)
    // does not move the media back.
    let mut out = Output::new();
    room.r.handle_datagram(later, addr(2000), &viewer_rtcp(&mut v2, 0xAAAA, &[], false), &mut out);
    assert_eq!(stat_str(&room.r, 2, "selectedTuple"), addr(2001).to_string());
    // The host's RTP from its proven tuple does not move its feedback to 7777 either.
    assert_eq!(stat_str(&room.r, 1, "selectedTuple"), addr(1000).to_string());
}

#[test]
fn without_a_dtls_address_the_first_authenticated_packet_proves_the_tuple() {
    let mut room = room(false);
    room.send(true);
    let mut out = Output::new();
    room.r.add_transport(4, "ufrag4", "pw4").unwrap();
    room.r.add_consumer(room.now, 40, 4, 10, consumer_spec(0xCCCC, "c9", false), &mut out).unwrap();
    room.r.bind_tuple(room.now, 4, addr(4000), true, &mut out).unwrap();
    let (lk, ls) = key(8);
    let (rk, rs) = key(9);
    let later = room.now + Duration::from_secs(2);
    room.now = later;
    let mut out = Output::new();
    room.r.set_srtp(later, 4, &SrtpKeys::new(P, &lk, &ls, &rk, &rs), None, &mut out).unwrap();
    assert!(out.transmits.is_empty(), "not connected yet: no key frame request");
    assert_eq!(stat_str(&room.r, 4, "selectedTuple"), "");
    let out = room.send(true);
    assert!(!dests(&out).contains(&4000));
    // The viewer's first RTCP (its keys: remote key seed 9) proves 4000.
    let mut v4 = ctx(9);
    let mut out = Output::new();
    room.r.handle_datagram(later, addr(4000), &viewer_rtcp(&mut v4, 0xCCCC, &[], false), &mut out);
    assert_eq!(stat_str(&room.r, 4, "selectedTuple"), addr(4000).to_string());
    assert_eq!(dests(&out), vec![1000], "connected: a key frame request to the host");
    let out = room.send(true);
    assert!(dests(&out).contains(&4000));
}

#[test]
fn ice_restart_changes_credentials_and_keeps_the_media_path() {
    let mut room = room(false);
    assert!(dests(&room.send(true)).contains(&2000));
    // Refused: an unknown transport, a ufrag another transport uses, an empty password;
    // none of them changes anything.
    assert!(matches!(room.r.set_ice_credentials(99, "x", "pw"), Err(RouterError::Unknown(..))));
    assert!(matches!(room.r.set_ice_credentials(2, "ufrag3", "pw"), Err(RouterError::Invalid(_))));
    assert!(matches!(room.r.set_ice_credentials(2, "fresh2", ""), Err(RouterError::Invalid(_))));
    assert!(matches!(room.r.set_ice_credentials(2, "a:b", "pw"), Err(RouterError::Invalid(_))));
    let mut out = Output::new();
    let old = stun_check::build_binding_request("ufrag2:remote", b"pw2", true);
    let _ = room.r.take_upcalls(); // the first-media upcalls
    room.r.handle_datagram(room.now, addr(2000), &old, &mut out);
    // A consent check on the selected tuple: the engine answers it.
    assert_eq!((room.r.take_upcalls().len(), dests(&out)), (0, vec![2000]));
    out.transmits.clear();

    room.r.set_ice_credentials(2, "fresh2", "newpw2").unwrap();
    // The old credentials: refused, from the viewer's tuple (its failed check) or elsewhere.
    room.r.handle_datagram(room.now, addr(2000), &old, &mut out);
    room.r.handle_datagram(room.now, addr(2500), &old, &mut out);
    // The new ufrag with the old password: refused too.
    let mixed = stun_check::build_binding_request("fresh2:remote", b"pw2", true);
    room.r.handle_datagram(room.now, addr(2000), &mixed, &mut out);
    assert!(!room.r.has_upcalls());
    assert_eq!(room.r.drops().get(DropReason::StunIntegrity), 2);
    assert_eq!(room.r.drops().get(DropReason::StunUnknown), 1);
    // The new ones go up.
    let new = stun_check::build_binding_request("fresh2:remote", b"newpw2", true);
    room.r.handle_datagram(room.now, addr(2001), &new, &mut out);
    let up = room.r.take_upcalls();
    assert_eq!((up.len(), up[0].transport, up[0].from), (1, 2, addr(2001)));
    // Media still goes to the proven tuple with the same SRTP keys (recv unprotects it).
    let out = room.send(false);
    let t = out.transmits.iter().find(|t| t.dest.port() == 2000).expect("media to 2000");
    assert_eq!(room.recv(t).0, 0xAAAA);
    // The new credentials nominate 2001; its authenticated SRTCP proves it.
    let mut out = Output::new();
    room.r.bind_tuple(room.now, 2, addr(2001), true, &mut out).unwrap();
    assert!(!dests(&room.send(false)).contains(&2001));
    let mut v2 = peer(2).0;
    room.r.handle_datagram(room.now, addr(2001), &viewer_rtcp(&mut v2, 0xAAAA, &[], false), &mut out);
    assert_eq!(stat_str(&room.r, 2, "selectedTuple"), addr(2001).to_string());
    // The old ufrag is free for another transport; the new one is not.
    room.r.add_transport(9, "ufrag2", "pw9").unwrap();
    assert!(matches!(room.r.add_transport(11, "fresh2", "pw"), Err(RouterError::Invalid(_))));
    // Setting the same ufrag again (a new password only) is fine.
    room.r.set_ice_credentials(2, "fresh2", "newerpw2").unwrap();
    room.r.handle_datagram(room.now, addr(2001), &new, &mut out);
    assert!(!room.r.has_upcalls());
    // Removing the transport frees its current ufrag.
    room.r.remove_transport(2).unwrap();
    room.r.add_transport(12, "fresh2", "pw").unwrap();
}

#[test]
fn a_tcp_tuple_carries_media_and_is_forgotten_when_its_connection_closes() {
    let mut room = room(false);
    assert!(dests(&room.send(true)).contains(&2000));
    let tcp = Remote::tcp(addr(2000).addr);
    // Viewer 2 moves to a TCP connection from the same ip:port as its UDP tuple: a different
    // remote. Nominated, then proven by authenticated SRTCP over TCP.
    let mut out = Output::new();
    room.r.bind_tuple(room.now, 2, tcp, true, &mut out).unwrap();
    assert_eq!(room.r.counts().tuples, 4);
    let mut v2 = peer(2).0;
    room.r.handle_datagram(room.now, tcp, &viewer_rtcp(&mut v2, 0xAAAA, &[], false), &mut out);
    assert_eq!(stat_str(&room.r, 2, "selectedTuple"), "10.0.0.1:2000/tcp");
    let out = room.send(false);
    let to_viewer: Vec<Remote> = out.transmits.iter().filter(|t| t.dest.port() == 2000).map(|t| t.dest).collect();
    assert!(!to_viewer.is_empty() && to_viewer.iter().all(|d| *d == tcp), "{to_viewer:?}");
    // A STUN request over TCP passes the same check as over UDP (the edge keeps the
    // connection for it); a bad one does not.
    let good = stun_check::build_binding_request("ufrag2:remote", b"pw2", true);
    assert!(room.r.handle_datagram(room.now, tcp, &good, &mut Output::new()));
    let bad = stun_check::build_binding_request("ufrag2:remote", b"wrong", true);
    assert!(!room.r.handle_datagram(room.now, tcp, &bad, &mut Output::new()));
    // The connection closes: the tuple is gone, media stops (UDP 2000 is not the nominated
    // one), nothing left behind.
    room.r.forget_remote(tcp);
    assert_eq!(room.r.counts().tuples, 3);
    assert_eq!(stat_str(&room.r, 2, "selectedTuple"), "");
    assert!(!dests(&room.send(false)).contains(&2000));
    room.r.forget_remote(tcp); // twice: nothing
    assert_eq!(room.r.counts().tuples, 3);
    // ICE nominates the UDP tuple again (proven before): media is back on it.
    let mut out = Output::new();
    room.r.bind_tuple(room.now, 2, addr(2000), true, &mut out).unwrap();
    assert!(dests(&room.send(true)).contains(&2000));
}
