"""Fan-out throughput of the native engine on loopback: 1 producer → N consumers.

A paced Python sender pushes pre-encrypted SRTP video packets (libsrtp) at the engine; N
"viewer" sockets are bound (read only with --drain). The figure is the engine's forwarded
egress packets/s from its own counters (consumer packets_out), measured after a warm-up.
Everything shares the machine's cores (sender, engine I/O thread, kernel).

Prints one JSON object. Usage: python bench/engine_fanout.py [--consumers 50] [--seconds 3]
[--rate 6000] [--tcp] [--workers 2]; raise --rate until ingress_loss > 0 to find the
saturation point. ``--workers``: the engine's I/O threads (the same offered load for 1 and 2
shows what a second worker adds: it sends its share of the fan-out).
``--tcp``: the viewers are ICE-TCP connections (each sends one valid STUN request, as ICE
does, then is read: RFC 4571 frames), for the cost per packet over TCP against UDP
(compare with ``--drain``, which reads the UDP viewers the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import threading
import time

from pylibsrtp import Policy, Session

from pysfu._native import Engine
from pysfu.dtls import SrtpKeys
from pysfu.testing.webrtc_peer import stun_binding_request

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14),
    "AEAD_AES_128_GCM": (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12),
}


def io_thread_cpus() -> list[float]:
    """CPU seconds of each engine I/O thread (every worker is named pysfu-io), from /proc, in
    thread-id order (= worker order: they are started in turn)."""
    tick = os.sysconf("SC_CLK_TCK")
    cpus = []
    for tid in sorted(os.listdir("/proc/self/task"), key=int):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != "pysfu-io":
                    continue
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpus.append((int(fields[11]) + int(fields[12])) / tick)
        except OSError:
            continue
    return cpus


SOL_UDP, UDP_SEGMENT = 17, 103  # linux/udp.h

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--consumers", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=1200)
    ap.add_argument("--profile", default="AEAD_AES_128_GCM", choices=sorted(PROFILES))
    ap.add_argument("--rate", type=float, default=6000, help="ingress packets/s")
    ap.add_argument("--drain", action="store_true", help="also read the viewer sockets")
    ap.add_argument("--tcp", action="store_true", help="viewers over ICE-TCP (read always)")
    ap.add_argument("--tcc", action="store_true",
                    help="viewers negotiated transport-cc: every egress packet is stamped")
    ap.add_argument("--l1t3", action="store_true",
                    help="VP8 payload descriptor with PictureID/TL0PICIDX/TID (every consumer "
                         "runs the temporal layer filter and rewrites them)")
    ap.add_argument("--gso", action=argparse.BooleanOptionalAction, default=True,
                    help="the engine's UDP GSO setting (default on)")
    ap.add_argument("--workers", type=int, default=1,
                    help="the engine's I/O worker threads (sockets on one port)")
    ap.add_argument("--pin-workers", action=argparse.BooleanOptionalAction, default=False,
                    help="pin worker i to the i-th CPU (the server's pin_workers; default "
                         "off here, as in the earlier records)")
    ap.add_argument("--gro", action=argparse.BooleanOptionalAction, default=False,
                    help="the engine's UDP GRO setting (default off)")
    ap.add_argument("--ingress-burst", type=int, default=1,
                    help="send the host's packets N at a time as one UDP GSO message (what a "
                         "NIC's GRO would hand up coalesced; loopback coalesces nothing else)")
    args = ap.parse_args()
    lib_profile, klen, slen = PROFILES[args.profile]

    eng = Engine("127.0.0.1", 0, gso=args.gso, workers=args.workers, gro=args.gro,
                 pin_workers=args.pin_workers)
    dest = ("127.0.0.1", eng.port)
    # Producer transport.
    host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host.bind(("127.0.0.1", 0))
    hk, hs = os.urandom(klen), os.urandom(slen)
    # Nominate each tuple, then key it with the address the (here: imagined) DTLS handshake
    # completed with: media goes only to proven addresses.
    host_addr = ("127.0.0.1", host.getsockname()[1])
    eng.add_transport(1, "host", "host-ice-password-0123456789")
    eng.bind_tuple(1, *host_addr, True)
    eng.set_srtp(1, SrtpKeys(args.profile, os.urandom(klen), os.urandom(slen), hk, hs), host_addr)
    spec = {
        "kind": "video",
        "mid": "0",
        "codecs": [{"payload_type": 96, "mapped_payload_type": 101, "mime": "video/VP8"}],
        "encodings": [{"ssrc": 1111, "mapped_ssrc": 2222}],
        "header_extensions": [],
        "key_frame_request": "pli",
        "paused": False,
    }
    eng.add_producer(10, 1, spec)
    viewers = []
    protocol = "tcp" if args.tcp else "udp"
    for i in range(args.consumers):
        h = 100 + i
        password = f"viewer-ice-password-{i:08d}"
        eng.add_transport(h, f"v{i}", password)
        if args.tcp:
            s = socket.create_connection(dest)
            # The connection proves itself with a valid STUN request (else closed in 5 s).
            stun = stun_binding_request(f"v{i}:x", password)
            s.sendall(struct.pack("!H", len(stun)) + stun)
            # Let the engine see the proof before the next connection (it refuses more than
            # MAX_TCP_UNPROVEN_PER_IP unproven connections from one address).
            time.sleep(0.005)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        ip, port = s.getsockname()[:2]
        if args.tcp:
            eng.bind_tuple(h, ip, port, True, "tcp")
            remote: tuple[str, int] | tuple[str, int, str] = (ip, port, "tcp")
        else:  # the call of engines without ICE-TCP too (before/after comparisons)
            eng.bind_tuple(h, ip, port, True)
            remote = (ip, port)
        eng.set_srtp(h, SrtpKeys(args.profile, os.urandom(klen), os.urandom(slen),
                              os.urandom(klen), os.urandom(slen)), remote)
        eng.add_consumer(1000 + i, h, 10, {"ssrc": 50000 + i, "mid": str(i), "mid_ext_id": 1,
                                            "payload_types": {101: 101}, "paused": False,
                                            "tcc_ext_id": 5 if args.tcc else None})
        viewers.append(s)

    # Pre-encrypt: a key frame first, then deltas (VP8 descriptor S=1; P bit in the frame tag).
    tx = Session(Policy(key=hk + hs, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=lib_profile))
    n_pre = 60000
    packets = []
    for seq in range(n_pre):
        key = seq == 0
        body = bytes([0x10, 0x10 if key else 0x11, 0x02, 0x00, 0x9D, 0x01, 0x2A])
        if args.l1t3:
            # Chrome's VP8 descriptor: X, S; 15-bit PictureID, TL0PICIDX, TID 0,2,1,2 (Y on the
            # TL1/TL2 frames of every second cycle), one packet per frame.
            tid = (0, 2, 1, 2)[seq % 4]
            sync = 0x20 if tid and (seq // 4) % 2 == 0 and seq % 4 < 3 else 0
            body = struct.pack("!BBHBB", 0x90, 0xE0, 0x8000 | (seq & 0x7FFF), (seq // 4) & 0xFF,
                               tid << 6 | sync) + body[1:]
        payload = body + b"\xab" * (args.size - 12 - len(body))
        hdr = struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq * 3000, 1111)
        packets.append(tx.protect(hdr + payload))

    stop = threading.Event()
    received = [0]

    def drain() -> None:
        import select

        ep = select.epoll()
        for s in viewers:
            ep.register(s.fileno(), select.EPOLLIN)
        by_fd = {s.fileno(): s for s in viewers}
        while not stop.is_set():
            for fd, _ in ep.poll(0.1):
                s = by_fd[fd]
                try:
                    while True:
                        if args.tcp:
                            received[0] += len(s.recv(1 << 16))  # bytes
                        else:
                            s.recv(4096)
                            received[0] += 1
                except BlockingIOError:
                    pass

    if args.drain or args.tcp:
        t = threading.Thread(target=drain, daemon=True)
        t.start()

    def forwarded() -> int:
        return sum(eng.stats(1000 + i)["packetsSent"] for i in range(args.consumers))

    # Paced sender: a burst every millisecond. Warm up for 0.5 s, then measure.
    rate = args.rate
    t0 = time.perf_counter()
    sent = 0
    warm = t0 + 0.5
    end = warm + args.seconds
    mark = None
    while sent < n_pre:
        now = time.perf_counter()
        if now >= end:
            break
        if mark is None and now >= warm:
            mark = (now, forwarded(), eng.stats(10)["packetsReceived"], sent,
                    resource.getrusage(resource.RUSAGE_SELF), io_thread_cpus())
        due = min(int((now - t0) * rate), n_pre)
        while args.ingress_burst > 1 and sent + args.ingress_burst <= due:
            # All packets have one size: one GSO message of ingress_burst segments.
            burst = packets[sent:sent + args.ingress_burst]
            segment = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", len(burst[0])))]
            host.sendmsg([b"".join(burst)], segment, 0, dest)
            sent += args.ingress_burst
        while args.ingress_burst <= 1 and sent < due:
            host.sendto(packets[sent], dest)
            sent += 1
        time.sleep(0.0005)
    time.sleep(0.05)
    t1 = time.perf_counter()
    fwd1, in1 = forwarded(), eng.stats(10)["packetsReceived"]
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    io1 = io_thread_cpus()
    stop.set()
    drops = {k: v for k, v in eng.drops().items() if v}
    totals = eng.totals()
    gso_on = eng.gso
    gro_on = eng.gro
    worker_stats = eng.worker_stats()
    eng.close()
    assert mark is not None, "run too short"
    m_t, m_fwd, m_in, m_sent, ru0, io0 = mark
    elapsed = t1 - m_t
    per_worker = [round((b - a) / elapsed, 3) for a, b in zip(io0, io1, strict=True)]
    io0, io1 = sum(io0), sum(io1)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    print(json.dumps({
        "bench": "engine_fanout",
        "profile": args.profile,
        "size": args.size,
        "consumers": args.consumers,
        "tcc": args.tcc,
        "seconds": round(elapsed, 3),
        "ingress_rate_target": rate,
        "ingress_sent": sent - m_sent,
        "ingress_processed": in1 - m_in,
        "ingress_loss": round(1 - (in1 - m_in) / max(1, sent - m_sent), 4),
        "forwarded": fwd1 - m_fwd,
        "forwarded_pps": round((fwd1 - m_fwd) / elapsed),
        "viewers_over": protocol,
        "gso": args.gso,
        "gso_in_use": gso_on,
        "gso_messages": totals["gsoMessages"],
        "gso_datagrams": totals["gsoDatagrams"],
        "gro": args.gro,
        "gro_in_use": gro_on,
        "gro_buffers": totals["groBuffers"],
        "gro_datagrams": totals["groDatagrams"],
        "ingress_burst": args.ingress_burst,
        "workers": args.workers,
        "pin_workers": args.pin_workers,
        "worker_cpu": [w["cpu"] for w in worker_stats],
        "worker_sent": [w["sent"] for w in worker_stats],
        "worker_cpu_s_per_s": per_worker,
        "worker_handed_off": [w["handedOff"] for w in worker_stats],
        "worker_inbox_peak": [w["inboxPeak"] for w in worker_stats],
        "received_by_viewers": (received[0] if args.drain and not args.tcp else None),
        "process_cpu_s_per_s": round(cpu / elapsed, 3),
        "io_thread_cpu_s_per_s": round((io1 - io0) / elapsed, 3),  # all workers
        "io_thread_us_per_egress_packet": round((io1 - io0) / max(1, fwd1 - m_fwd) * 1e6, 3),
        "drops": drops,
        "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
