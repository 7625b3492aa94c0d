//! The association over an in-memory pair: a link that loses, reorders and duplicates
//! packets, driven by a simulated clock (no sockets, no sleeping).

use super::*;

/// The tests of this file one at a time: the live-association count is process-wide.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Deterministic xorshift for the link's choices.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One direction of the link: packets wait `delay` ticks (+ jitter when reordering).
#[derive(Default)]
struct Link {
    queue: Vec<(u64, Vec<u8>)>,
    loss: u64,
    dup: u64,
    reorder: u64,
    sent: u64,
    lost: u64,
}

impl Link {
    fn push(&mut self, rng: &mut Lcg, tick: u64, p: Vec<u8>) {
        self.sent += 1;
        if rng.chance(self.loss) {
            self.lost += 1;
            return;
        }
        let jitter = if rng.chance(self.reorder) { 1 + rng.next() % 4 } else { 0 };
        if rng.chance(self.dup) {
            self.queue.push((tick + 1 + jitter + 1, p.clone()));
        }
        self.queue.push((tick + 1 + jitter, p));
    }
    fn due(&mut self, tick: u64) -> Vec<Vec<u8>> {
        let (due, rest): (Vec<_>, Vec<_>) = self.queue.drain(..).partition(|(t, _)| *t <= tick);
        self.queue = rest;
        due.into_iter().map(|(_, p)| p).collect()
    }
}

struct Pair {
    server: SctpCore,
    client: SctpCore,
    c2s: Link,
    s2c: Link,
    rng: Lcg,
    base: Instant,
    tick: u64,
    at_server: Vec<Output>,
    at_client: Vec<Output>,
}

const TICK: Duration = Duration::from_millis(10);

impl Pair {
    fn new(loss: u64, dup: u64, reorder: u64) -> Pair {
        Pair {
            server: SctpCore::new(Role::Server),
            client: SctpCore::new(Role::Client),
            c2s: Link { loss, dup, reorder, ..Link::default() },
            s2c: Link { loss, dup, reorder, ..Link::default() },
            rng: Lcg(0x9E37_79B9_7F4A_7C15),
            base: Instant::now(),
            tick: 0,
            at_server: Vec::new(),
            at_client: Vec::new(),
        }
    }

    fn now(&self) -> Instant {
        self.base + TICK * self.tick as u32
    }

    fn step(&mut self) {
        self.tick += 1;
        let now = self.now();
        for p in self.c2s.due(self.tick) {
            self.server.handle_packet(now, &p);
        }
        for p in self.s2c.due(self.tick) {
            self.client.handle_packet(now, &p);
        }
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            self.client.handle_timeout(now);
        }
        self.flush();
    }

    fn flush(&mut self) {
        let now = self.now();
        for p in self.client.poll_packets(now) {
            self.c2s.push(&mut self.rng, self.tick, p);
        }
        for p in self.server.poll_packets(now) {
            self.s2c.push(&mut self.rng, self.tick, p);
        }
        self.at_server.extend(self.server.take_outputs());
        self.at_client.extend(self.client.take_outputs());
    }

    fn run_until(&mut self, max_ticks: u64, mut done: impl FnMut(&Pair) -> bool) -> bool {
        for _ in 0..max_ticks {
            self.flush();
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    fn connect(&mut self) {
        assert!(self.run_until(3000, |p| p.server.is_connected() && p.client.is_connected()),
                "association did not come up");
    }

    fn server_messages(&self) -> Vec<(u16, u32, Vec<u8>)> {
        self.at_server.iter().filter_map(|o| match o {
            Output::Message { stream, ppid, data } => Some((*stream, *ppid, data.clone())),
            _ => None,
        }).collect()
    }

    fn client_messages(&self) -> Vec<(u16, u32, Vec<u8>)> {
        self.at_client.iter().filter_map(|o| match o {
            Output::Message { stream, ppid, data } => Some((*stream, *ppid, data.clone())),
            _ => None,
        }).collect()
    }
}

fn big_message(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8).collect()
}

#[test]
fn handshake_then_string_binary_and_empty_messages_in_order() {
    let _serial = serial();
    let mut p = Pair::new(0, 0, 0);
    p.connect();
    assert!(p.at_server.contains(&Output::Connected));
    p.client.open_stream(0, true, Reliability::Reliable, None);
    let msgs: [(u32, &[u8]); 4] = [(PPID_STRING, b"hello"), (PPID_BINARY, &[0, 1, 2]),
                                   (PPID_STRING, b""), (PPID_BINARY, b"")];
    for (ppid, data) in msgs {
        assert_eq!(p.client.send(0, ppid, &Bytes::copy_from_slice(data)), SendResult::Sent);
    }
    assert!(p.run_until(500, |p| p.server_messages().len() == 4));
    assert_eq!(p.server_messages(), vec![
        (0, PPID_STRING, b"hello".to_vec()),
        (0, PPID_BINARY, vec![0, 1, 2]),
        (0, PPID_STRING_EMPTY, vec![]),
        (0, PPID_BINARY_EMPTY, vec![]),
    ]);
    // And back, on a stream the server configures (a data consumer's).
    p.server.open_stream(3, true, Reliability::Reliable, None);
    assert_eq!(p.server.send(3, PPID_STRING, &Bytes::from_static(b"back")), SendResult::Sent);
    assert!(p.run_until(500, |p| !p.client_messages().is_empty()));
    assert_eq!(p.client_messages(), vec![(3, PPID_STRING, b"back".to_vec())]);
}

#[test]
fn ordered_messages_survive_loss_reordering_and_duplication() {
    let _serial = serial();
    let mut p = Pair::new(10, 5, 20);
    p.connect();
    p.client.open_stream(1, true, Reliability::Reliable, None);
    let n = 300;
    for i in 0..n {
        let body = format!("message {i} {}", "x".repeat(300));
        assert_eq!(p.client.send(1, PPID_STRING, &Bytes::from(body)), SendResult::Sent);
    }
    assert!(p.run_until(20_000, |p| p.server_messages().len() >= n), "got {}", p.server_messages().len());
    let got: Vec<String> = p.server_messages().into_iter()
        .map(|(_, _, d)| String::from_utf8(d).unwrap()).collect();
    let want: Vec<String> = (0..n).map(|i| format!("message {i} {}", "x".repeat(300))).collect();
    assert_eq!(got, want, "every message once, in order");
    assert!(p.c2s.lost > 5, "the link did lose packets ({})", p.c2s.lost);
}

#[test]
fn a_200_kb_message_is_fragmented_and_reassembled_under_loss() {
    let _serial = serial();
    let mut p = Pair::new(5, 3, 10);
    p.connect();
    p.server.open_stream(0, true, Reliability::Reliable, None);
    let data = big_message(200 * 1024);
    assert_eq!(p.server.send(0, PPID_BINARY, &Bytes::from(data.clone())), SendResult::Sent);
    assert!(p.run_until(20_000, |p| !p.client_messages().is_empty()));
    let got = p.client_messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].2.len(), data.len());
    assert!(got[0].2 == data, "reassembled intact");
    assert!(p.s2c.sent > 150, "went as many packets ({})", p.s2c.sent);
}

#[test]
fn largest_message_passes_and_one_byte_more_is_refused() {
    let _serial = serial();
    let mut p = Pair::new(0, 0, 0);
    p.connect();
    p.client.open_stream(0, true, Reliability::Reliable, None);
    let max = big_message(MAX_MESSAGE_SIZE as usize);
    assert_eq!(p.client.send(0, PPID_BINARY, &Bytes::from(max.clone())), SendResult::Sent);
    let over = Bytes::from(big_message(MAX_MESSAGE_SIZE as usize + 1));
    assert_eq!(p.client.send(0, PPID_BINARY, &over), SendResult::TooBig);
    assert_eq!(p.client.counters.dropped_too_big, 1);
    assert!(p.run_until(5000, |p| !p.server_messages().is_empty()));
    assert!(p.server_messages()[0].2 == max);
}

#[test]
fn unordered_without_retransmissions_never_blocks_later_messages() {
    let _serial = serial();
    let mut p = Pair::new(30, 0, 10);
    p.connect();
    p.client.open_stream(2, false, Reliability::MaxRetransmits(0), None);
    let n = 200u32;
    for i in 0..n {
        p.client.send(2, PPID_BINARY, &Bytes::from(i.to_be_bytes().to_vec()));
        p.step();
    }
    // The last message sent arrives within a few ticks of the link's delay, whatever was
    // lost before it: nothing waits for a retransmission.
    let last = (n - 1).to_be_bytes().to_vec();
    let arrived = p.run_until(20, |p| p.server_messages().iter().any(|m| m.2 == last));
    let got = p.server_messages().len() as u32;
    assert!(got < n, "some were lost for good ({got}/{n})");
    assert!(got > n / 2, "most arrived ({got}/{n})");
    if !arrived {
        // The last one itself may be lost (30 %): then some message of the last 10 arrived.
        let tail: Vec<Vec<u8>> = (n - 10..n).map(|i| i.to_be_bytes().to_vec()).collect();
        assert!(p.server_messages().iter().any(|m| tail.contains(&m.2)),
                "late messages were held up");
    }
    // Nothing is left queued for retransmission on the sender.
    p.run_until(300, |_| false);
    assert_eq!(p.client.buffered_amount(2), 0);
}

#[test]
fn max_packet_life_time_gives_up_on_old_messages() {
    let _serial = serial();
    let mut p = Pair::new(0, 0, 0);
    p.connect();
    p.client.open_stream(4, true, Reliability::MaxPacketLifeTime(50), None);
    // Everything the client sends for a while is lost.
    p.c2s.loss = 100;
    for i in 0..5u8 {
        p.client.send(4, PPID_BINARY, &Bytes::from(vec![i]));
    }
    p.run_until(100, |_| false);
    p.c2s.loss = 0;
    p.client.send(4, PPID_BINARY, &Bytes::from_static(b"late"));
    assert!(p.run_until(1000, |p| p.server_messages().iter().any(|m| m.2 == b"late")),
            "a message after expired ones is delivered (ordered stream not stuck)");
    assert!(p.server_messages().iter().all(|m| m.2.len() == 4), "expired ones never came");
}

#[test]
fn dcep_open_is_acknowledged_and_reported() {
    let _serial = serial();
    let mut p = Pair::new(0, 0, 0);
    p.connect();
    p.client.open_stream(6, false, Reliability::MaxRetransmits(2), Some(("chat".into(), "json".into())));
    assert!(p.run_until(500, |p| p.at_server.iter().any(|o| matches!(o, Output::ChannelOpened { .. }))));
    let opened = p.at_server.iter().find_map(|o| match o {
        Output::ChannelOpened { stream, open } => Some((*stream, open.clone())),
        _ => None,
    }).unwrap();
    assert_eq!(opened.0, 6);
    assert_eq!(opened.1.label, "chat");
    assert_eq!(opened.1.protocol, "json");
    assert!(!opened.1.ordered);
    assert_eq!(opened.1.reliability, Reliability::MaxRetransmits(2));
    // The server may now write on it (the ACK configured it); the ACK itself is no message.
    assert_eq!(p.server.send(6, PPID_STRING, &Bytes::from_static(b"hi")), SendResult::Sent);
    assert!(p.run_until(500, |p| !p.client_messages().is_empty()));
    assert_eq!(p.client_messages(), vec![(6, PPID_STRING, b"hi".to_vec())]);
    assert_eq!(p.server.counters.dcep_malformed + p.client.counters.dcep_malformed, 0);
}

#[test]
fn refusals_not_connected_no_stream_bad_ppid_buffer_full() {
    let _serial = serial();
    let mut p = Pair::new(0, 0, 0);
    p.server.open_stream(0, true, Reliability::Reliable, None);
    assert_eq!(p.server.send(0, PPID_STRING, &Bytes::from_static(b"x")), SendResult::NotConnected);
    p.connect();
    assert_eq!(p.server.send(9, PPID_STRING, &Bytes::from_static(b"x")), SendResult::NoStream);
    assert_eq!(p.server.send(0, 50, &Bytes::from_static(b"x")), SendResult::BadPpid);
    // The client stops reading (its packets are lost): the stream's buffer fills, then refuses.
    p.s2c.loss = 100;
    let chunk = Bytes::from(big_message(200 * 1024));
    let mut results = Vec::new();
    for _ in 0..8 {
        results.push(p.server.send(0, PPID_BINARY, &chunk));
        p.step();
    }
    assert!(results.contains(&SendResult::BufferFull), "{results:?}");
    assert!(p.server.buffered_amount(0) <= MAX_BUFFERED_PER_STREAM);
    assert!(p.server.counters.dropped_buffer_full > 0);
}

#[test]
fn garbage_and_truncated_packets_never_panic() {
    let _serial = serial();
    let mut p = Pair::new(0, 0, 0);
    p.connect();
    let mut rng = Lcg(12345);
    let now = p.now();
    for len in 0..400usize {
        let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        p.server.handle_packet(now, &junk);
    }
    // A real packet with bytes flipped.
    p.client.open_stream(0, true, Reliability::Reliable, None);
    p.client.send(0, PPID_STRING, &Bytes::from_static(b"ok"));
    let packets = p.client.poll_packets(now);
    for pk in &packets {
        for i in 0..pk.len() {
            let mut bad = pk.clone();
            bad[i] ^= 0x5a;
            p.server.handle_packet(now, &bad);
        }
    }
    assert!(p.server.counters.unroutable > 0);
    for pk in packets {
        p.c2s.push(&mut p.rng, p.tick, pk);
    }
    assert!(p.run_until(500, |p| p.server_messages().iter().any(|m| m.2 == b"ok")),
            "still works after the garbage");
}

#[test]
fn live_count_follows_drop() {
    let _serial = serial();
    let before = live_associations();
    let a = SctpCore::new(Role::Server);
    let b = SctpCore::new(Role::Client);
    assert_eq!(live_associations(), before + 2);
    drop(a);
    assert_eq!(live_associations(), before + 1);
    drop(b);
    assert_eq!(live_associations(), before);
}
