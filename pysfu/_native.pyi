"""Type stub of the native data plane (``native/``, PyO3 module ``pysfu._native``).

The producer and consumer specs are declared once, in Rust (``native/src/router/spec.rs``,
``#[derive(FromPyObject)]``): these TypedDicts mirror them key for key. A spec that does not
fit raises ``ValueError`` naming the field; an unknown handle raises ``KeyError``.
"""

from types import TracebackType
from typing import Any, Literal, NotRequired, Protocol, TypedDict

__all__ = [
    "CodecSpec",
    "ConsumerSpec",
    "Engine",
    "MAX_TCP_CONNECTIONS",
    "MAX_TCP_PER_IP",
    "MAX_TCP_UNPROVEN_PER_IP",
    "SctpAssociation",
    "TCP_IDLE_TIMEOUT",
    "TCP_STALL_DEADLINE",
    "TCP_STUN_DEADLINE",
    "TCP_WRITE_QUEUE_BYTES",
    "sctp_associations",
    "sctp_fanout",
    "EncodingSpec",
    "ExtSpec",
    "ProducerSpec",
    "Removed",
    "SrtpKeys",
    "StatValue",
    "version",
]

StatValue = int | str | bool | float

# ICE-TCP limits of the engine (native/src/tcp.rs); times in seconds.
MAX_TCP_CONNECTIONS: int
MAX_TCP_PER_IP: int
MAX_TCP_UNPROVEN_PER_IP: int
TCP_STUN_DEADLINE: float
TCP_IDLE_TIMEOUT: float
TCP_STALL_DEADLINE: float
TCP_WRITE_QUEUE_BYTES: int

class CodecSpec(TypedDict):
    payload_type: int
    """The producer's payload type (0-127)."""
    mapped_payload_type: int
    """The router's payload type for this codec."""
    mime: str
    rtx_payload_type: NotRequired[int | None]
    mapped_rtx_payload_type: NotRequired[int | None]
    """Given with ``rtx_payload_type`` or not at all."""
    clock_rate: NotRequired[int | None]
    """RTP clock rate; absent: 90000 for video, 48000 for audio."""

class EncodingSpec(TypedDict):
    ssrc: NotRequired[int | None]
    """Signalled SSRC; absent: learnt from MID/RID."""
    rtx_ssrc: NotRequired[int | None]
    rid: NotRequired[str | None]
    mapped_ssrc: int

class ExtSpec(TypedDict):
    id: int
    """The producer's extension id."""
    router_id: NotRequired[int | None]
    """The router's id for it; absent: not forwarded."""
    uri: str

class ProducerSpec(TypedDict):
    kind: str
    """"audio" or "video" (anything else is refused)."""
    mid: NotRequired[str | None]
    codecs: list[CodecSpec]
    encodings: list[EncodingSpec]
    header_extensions: NotRequired[list[ExtSpec] | None]
    key_frame_request: NotRequired[Literal["pli", "fir"] | None]
    paused: NotRequired[bool]
    nack: NotRequired[bool]
    """The producer negotiated plain ``nack``: gaps are NACKed upstream, its RTX accepted."""

class ConsumerSpec(TypedDict):
    ssrc: int
    rtx_ssrc: NotRequired[int | None]
    mid: NotRequired[str | None]
    mid_ext_id: NotRequired[int | None]
    payload_types: dict[int, int]
    """Router payload type → consumer payload type."""
    paused: NotRequired[bool]
    encoding: NotRequired[int]
    """The producer encoding followed (a simulcast consumer starts on the highest)."""
    rtx_payload_types: NotRequired[dict[int, int] | None]
    """Router payload type → consumer RTX payload type."""
    nack: NotRequired[bool]
    """The viewer negotiated plain ``nack`` (default True): its NACKs are answered."""
    cname: NotRequired[str | None]
    pipe_ssrcs: NotRequired[list[tuple[int, int | None]]]
    """A pipe consumer: (SSRC, RTX SSRC) of every producer encoding, forwarded unchanged."""
    svc: NotRequired[tuple[int, int, bool] | None]
    """VP9 SVC: (spatial layers, temporal layers, k-SVC); layers are filtered per consumer."""
    tcc_ext_id: NotRequired[int | None]
    """transport-cc negotiated: transport-wide sequence numbers with this extension id on
    everything the transport sends; the viewer's feedback feeds the send-side estimate."""

class Removed(TypedDict):
    """What a removal took with it (the named object included): the engine alone decides
    the cascade (a transport takes its producers and consumers, a producer its consumers)."""

    producers: list[int]
    consumers: list[int]

class SrtpKeys(Protocol):
    """One transport's SRTP keys, read by attribute (``pysfu.dtls.SrtpKeys`` is one: built
    once from the DTLS exporter). "local" protects what we send, "remote" what the peer sends.
    Anything that does not fit raises ``ValueError`` naming the attribute."""

    @property
    def profile(self) -> str:
        """The negotiated profile's name ("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_256_GCM", ...)."""
    @property
    def local_key(self) -> bytes: ...
    @property
    def local_salt(self) -> bytes: ...
    @property
    def remote_key(self) -> bytes: ...
    @property
    def remote_salt(self) -> bytes: ...

def version() -> str: ...

class Engine:
    """I/O worker threads with a UDP socket each on one port, the forwarding router. Calls
    release the GIL."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, udp: bool = True, tcp: bool = True,
        gso: bool = True, workers: int = 1, gro: bool = False, pin_workers: bool = False,
    ) -> None:
        """``udp``: read the UDP socket (bound either way); ``tcp``: accept ICE-TCP
        connections (RFC 4571 framing) on the same port number. Not both off. ``gso``: send
        bursts to one destination as UDP GSO messages (off for good if the kernel refuses).
        ``workers``: I/O threads (1..64), each with its own socket in an SO_REUSEPORT group
        on the port (a fixed port held by anyone else is refused); one without UDP. ``gro``:
        receive with UDP GRO (coalesced buffers split into datagrams before routing; off,
        and ``groRefused`` 1, if the kernel refuses it). ``pin_workers``: with more than one
        worker and at least one per CPU of this process's affinity, worker i is pinned to the
        i-th of those CPUs (round robin; ``worker_stats()[i]["cpu"]``, None when unpinned)."""
    @property
    def port(self) -> int: ...
    @property
    def workers(self) -> int: ...
    def sending_worker(self, ip: str, port: int) -> int:
        """The worker whose socket sends to UDP remote ip:port (a stable hash of it); with
        several workers also the owner that protects the SRTP of a transport whose DTLS
        completed with that address."""
    def worker_stats(self) -> list[dict[str, int | None]]:
        """Per worker, datagrams: ``received`` (its socket), ``sent`` (its socket),
        ``handedOff`` (to other workers), ``taken`` (from its inbox), ``inboxFull`` (dropped:
        its inbox was full), ``inboxPeak`` (batches waiting at most); ``sealed`` (protected
        for the transports it owns: several workers), ``sealNoKey`` and ``sealFailed``
        (dropped instead: no context for their keys; protection failed), ``contexts``
        (outbound SRTP contexts it holds now: the transports it owns); ``shares`` (producer
        packets another worker left for this worker's consumers, forwarded here),
        ``sharesFull`` (not forwarded here: its share queue was full), ``sharePeak`` (shares
        waiting at most); where its time went, nanoseconds: ``lockWaitNs`` (waiting for the
        router's lock), ``routerNs`` (holding it), ``sealNs`` (protecting), ``sendNs`` (in the
        kernel's send calls, which carried ``messages`` messages: a GSO message or a plain
        datagram each); ``cpu``: the CPU it is pinned to (``pin_workers``), else None."""
    @property
    def gso(self) -> bool:
        """GSO in use now: the setting, unless the kernel refused it since."""
    @property
    def gro(self) -> bool:
        """GRO in use: the setting, unless the kernel refused it."""
    def _test_refuse_gso(self) -> None:
        """Test hook: SO_NO_CHECK on the UDP socket, so the kernel refuses GSO (EINVAL)."""
    def fileno(self) -> int:
        """Readable while ``drain()`` has items."""
    def drain(
        self,
    ) -> list[tuple[Literal["stun", "dtls", "media"], int, str, int, bytes, Literal["udp", "tcp"]]]:
        """Queued STUN/DTLS datagrams: (kind, transport, remote ip, remote port, data,
        protocol)."""
    def send(
        self, transport: int, ip: str, port: int, data: bytes, protocol: str = "udp"
    ) -> None:
        """To the remote's UDP address, or framed on its TCP connection ("tcp")."""
    def send_many(self, items: list[tuple[int, str, int, bytes, str]]) -> int:
        """Many datagrams in one call: (transport, ip, port, data, protocol "udp"|"tcp")."""
    def add_transport(self, handle: int, local_ufrag: str, ice_password: str) -> None: ...
    def set_consent_timeout(self, seconds: float) -> None: ...
    def set_ice_credentials(self, handle: int, local_ufrag: str, ice_password: str) -> None:
        """ICE restart: the old credentials are refused from now on; tuples, SRTP keys,
        producers and consumers stay."""
    def bind_tuple(
        self, handle: int, ip: str, port: int, selected: bool, protocol: str = "udp"
    ) -> None: ...
    def set_srtp(
        self, handle: int, keys: SrtpKeys,
        remote: tuple[str, int] | tuple[str, int, str] | None = None,
    ) -> None:
        """``remote``: the (ip, port) or (ip, port, protocol) the DTLS handshake completed
        with (proves that tuple)."""
    def remove_transport(self, handle: int) -> Removed:
        """Also removes the transport's producers and consumers (and their consumers)."""
    def add_plain_transport(
        self, handle: int, host: str, ports: tuple[int, int], comedia: bool = False,
        srtp: bool = False, rtcp_mux: bool = True,
    ) -> tuple[int, int | None]:
        """A plain/pipe transport on its own UDP socket (a free port of the range): no ICE,
        no DTLS; ``comedia``: the remote address is the first valid packet's source;
        ``rtcp_mux`` false: a second socket for RTCP (port + 1 where the range allows).
        The ports: (RTP, RTCP or None)."""
    def connect_plain(
        self, handle: int, ip: str | None = None, port: int | None = None,
        keys: SrtpKeys | None = None, rtcp_port: int | None = None,
    ) -> None:
        """The plain transport's remote address (not for comedia), remote RTCP port (only
        without rtcp-mux, then required) and SRTP keys."""
    def request_key_frame(self, handle: int) -> None:
        """Ask consumer ``handle``'s producer for a key frame."""
    def plain_sockets(self) -> int:
        """Sockets of plain/pipe transports open now."""
    def add_producer(self, handle: int, transport: int, spec: ProducerSpec) -> None: ...
    def remove_producer(self, handle: int) -> Removed:
        """Also removes the producer's consumers."""
    def pause_producer(self, handle: int) -> None: ...
    def resume_producer(self, handle: int) -> None: ...
    def add_consumer(
        self, handle: int, transport: int, producer: int, spec: ConsumerSpec
    ) -> None: ...
    def remove_consumer(self, handle: int) -> None: ...
    def pause_consumer(self, handle: int) -> None: ...
    def resume_consumer(self, handle: int) -> None: ...
    def set_preferred_layers(
        self, handle: int, spatial: int, temporal: int | None = None
    ) -> tuple[int, int]: ...
    def counts(self) -> dict[str, int]:
        """transports, producers, consumers, streams, tuples (remote addresses bound to a
        transport) and tcp_connections (open ICE-TCP connections)."""
    def stats(self, handle: int) -> dict[str, StatValue]: ...
    def rtp_stats(self, handle: int) -> list[dict[str, StatValue]]: ...
    def totals(self) -> dict[str, int]:
        """Engine-wide counters that never go down: ``audioPacketsReceived``,
        ``videoBytesForwarded``, ``nacksReceived``, ``nacksSent``, ``packetsRetransmitted``,
        ``plisReceived``, ``firsSent``, ``keyFramesRequested``, ``tcpConnectionsAccepted``,
        ``gsoMessages``, ``gsoDatagrams``, ``gsoRefused``, ``groBuffers``, ``groDatagrams``,
        ``groRefused``, ..."""
    def drops(self) -> dict[str, int]:
        """Datagrams and packets dropped, by reason (stable keys), with what the ICE-TCP edge
        refused, dropped and closed: ``tcp_refused_*``, ``tcp_queue_full``, ``tcp_closed_*``,
        ``tcp_no_connection``, ``tcp_accept_errors``; ``workerInboxFull`` (fan-out datagrams
        for another worker whose inbox was full), ``workerSharesFull`` (producer packets not
        forwarded to a worker's consumers: its share queue was full), ``workerSealNoKey``
        and ``workerSealFailed`` (datagrams an owner worker could not protect)."""
    def take_panic(self) -> str | None: ...
    def _test_panic(self, place: Literal["io", "control", "pyo3"]) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Engine: ...
    def __exit__(
        self,
        a: type[BaseException] | None,
        b: BaseException | None,
        c: TracebackType | None,
    ) -> None: ...


# Data channels (native/src/sctp.rs): one SCTP association per transport, sans-IO.
SctpEvent = tuple[Any, ...]


class SctpAssociation:
    def __init__(self, role: Literal["server", "client"], now: float) -> None: ...
    def handle_packet(self, data: bytes, now: float) -> None: ...
    def handle_timeout(self, now: float) -> None: ...
    def poll_timeout(self) -> float | None: ...
    def open_stream(self, stream: int, ordered: bool = True, max_retransmits: int | None = None,
                    max_packet_life_time: int | None = None, label: str | None = None,
                    protocol: str = "") -> None: ...
    def close_stream(self, stream: int) -> None: ...
    def send(self, stream: int, ppid: int, data: bytes) -> str: ...
    def take_packets(self, now: float) -> list[bytes]: ...
    def seal_with(self, cipher: str, key: bytes, iv: bytes, epoch: int) -> bool: ...
    @property
    def sealed(self) -> bool: ...
    def take_events(self) -> list[SctpEvent]: ...
    def shutdown(self) -> None: ...
    def buffered_amount(self, stream: int) -> int: ...
    @property
    def connected(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def counters(self) -> dict[str, int]: ...


def sctp_fanout(targets: list[tuple[SctpAssociation, int]], ppid: int, data: bytes,
                now: float) -> list[tuple[str, list[bytes]]]: ...
def sctp_associations() -> int: ...
