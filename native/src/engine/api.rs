//! The `Engine` Python class: start (bind, spawn the threads), control calls with the GIL
//! released, stats, shutdown.

use super::*;


/// The data plane: worker threads with a UDP socket each on one port, the forwarding router.
#[pyclass(frozen, module = "pysfu._native")]
pub struct Engine {
    port: u16,
    up_raw_fd: i32,
    inner: Mutex<Option<Running>>,
}

/// A started engine: its shared state and worker threads.
type Running = (Arc<Shared>, Vec<JoinHandle<()>>);

impl Engine {
    fn shared(&self) -> PyResult<Arc<Shared>> {
        match &*self.inner.lock() {
            Some((s, _)) => Ok(s.clone()),
            None => Err(PyValueError::new_err("engine is closed")),
        }
    }

    /// Run a router control call with the GIL released, then send what it produced.
    fn control<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Router, Instant, &mut Output) -> Result<T, RouterError> + Send,
    ) -> PyResult<T> {
        let shared = self.shared()?;
        py.detach(move || {
            let mut out = Output::new();
            let r = {
                let mut st = shared.lock();
                let r = catch_unwind(AssertUnwindSafe(|| f(&mut st.router, Instant::now(), &mut out)));
                shared.publish_keys(&mut st);
                match r {
                    Ok(r) => r,
                    Err(_) => {
                        st.router.count_drop(DropReason::Panic, 1);
                        Err(RouterError::Invalid("internal error (panic) in engine call".into()))
                    }
                }
            };
            shared.send(&mut out);
            r
        })
        .map_err(router_err)
    }

    fn shutdown(&self) {
        let taken = self.inner.lock().take();
        if let Some((shared, threads)) = taken {
            shared.stop.store(true, Ordering::Release);
            shared.stop_fd.set();
            for thread in threads {
                let _ = thread.join();
            }
            shared.plain.join();
            // Dropping the last Arc closes the socket and both fds.
            drop(shared);
        }
    }
}

impl Engine {
    /// `add_plain_transport`'s work; `flags`: (comedia, srtp, rtcp_mux).
    fn open_plain(&self, py: Python<'_>, handle: Handle, host: &str, ports: (u16, u16), flags: (bool, bool, bool)) -> PyResult<(u16, Option<u16>)> {
        let ((port_min, port_max), (comedia, srtp, rtcp_mux)) = (ports, flags);
        let shared = self.shared()?;
        let host = host.to_owned();
        let seed = os_seed();
        let ((via, port), rtcp) = py
            .detach(|| match rtcp_mux {
                true => shared.plain.open(handle, &host, port_min, port_max, seed).map(|rtp| (rtp, None)),
                false => shared.plain.open_pair(handle, &host, port_min, port_max, seed).map(|p| (p.rtp, Some(p.rtcp))),
            })
            .map_err(|e| PyValueError::new_err(format!("cannot bind a plain transport socket on {host} in {port_min}-{port_max}: {e}")))?;
        let made = self.control(py, move |r, _, _| {
            r.add_plain_transport(handle, via, comedia, srtp)?;
            let split = rtcp.map_or(Ok(()), |(rtcp_via, _)| r.set_plain_rtcp_socket(handle, rtcp_via));
            if split.is_err() {
                let _ = r.remove_transport(handle);
            }
            split
        });
        if let Err(e) = made {
            shared.plain.close_transport(handle);
            return Err(e);
        }
        let s2 = shared.clone();
        shared
            .plain
            .ensure_thread(|| std::thread::Builder::new().name("pysfu-plain".into()).spawn(move || plain_thread(s2)))
            .map_err(|e| PyValueError::new_err(format!("cannot start the plain transports' thread: {e}")))?;
        Ok((port, rtcp.map(|(_, p)| p)))
    }
}

#[pymethods]
impl Engine {
    /// `udp`: read the UDP socket (it is bound either way: TCP shares its port number);
    /// `tcp`: listen for ICE-TCP connections on the same port number.
    #[new]
    /// `gso`: send bursts to one destination as UDP GSO messages where the kernel takes them.
    /// `workers`: I/O threads, each with its own UDP socket on the port (`workers.rs`);
    /// without UDP, one.
    /// `gro`: receive with UDP GRO (`io::set_gro`): coalesced buffers split into datagrams
    /// before the router; off for good (totals `groRefused`) where the kernel refuses it.
    /// `pin_workers`: with more than one worker and at least one per CPU this process may run
    /// on, pin worker i to the i-th of them (`affinity.rs`; `worker_stats()[i]["cpu"]`).
    #[pyo3(signature = (host = "127.0.0.1", port = 0, udp = true, tcp = true, gso = true, workers = 1, gro = false,
                        pin_workers = false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: &str,
        port: u16,
        udp: bool,
        tcp: bool,
        gso: bool,
        workers: usize,
        gro: bool,
        pin_workers: bool,
    ) -> PyResult<Self> {
        if !udp && !tcp {
            return Err(PyValueError::new_err("the engine needs UDP or TCP (or both)"));
        }
        if !(1..=MAX_WORKERS).contains(&workers) {
            return Err(PyValueError::new_err(format!("workers must be 1..={MAX_WORKERS}, not {workers}")));
        }
        let workers = if udp { workers } else { 1 };
        let (sockets, listener) = bind_both(host, port, tcp, workers)?;
        let port = sockets[0].local_addr().map_err(|e| PyValueError::new_err(e.to_string()))?.port();
        let (gro_on, gro_refused) = enable_gro(&sockets, gro && udp);
        let up_fd = EventFd::new().map_err(|e| PyValueError::new_err(format!("eventfd: {e}")))?;
        let stop_fd = EventFd::new().map_err(|e| PyValueError::new_err(format!("eventfd: {e}")))?;
        let poller = Poller::new().map_err(|e| PyValueError::new_err(format!("epoll: {e}")))?;
        let epoll_err = |e: std::io::Error| PyValueError::new_err(format!("epoll: {e}"));
        let reg = |fd: i32, token: u64| poller.add(fd, token, READABLE).map_err(epoll_err);
        let ios = worker_ios(sockets, udp, &poller, &stop_fd)?;
        reg(stop_fd.as_raw_fd(), TOKEN_STOP)?;
        let tcp = listener.map(|l| TcpEdge::new(l, TOKEN_LISTENER));
        if let Some(t) = &tcp {
            reg(t.listener_fd(), TOKEN_LISTENER)?;
        }
        let up_raw_fd = up_fd.as_raw_fd();
        let plain = PlainSockets::new().map_err(|e| PyValueError::new_err(format!("epoll: {e}")))?;
        plain.watch_stop(stop_fd.as_raw_fd()).map_err(|e| PyValueError::new_err(format!("epoll: {e}")))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State { router: new_router(ios.len()), signalled: false, last_panic: None, panic_next: false, wakes: Wakes::default() }),
            mesh: Mesh::new(ios.len()),
            timer_at: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            workers: ios,
            udp,
            tcp: tcp.map(Mutex::new),
            poller,
            up_fd,
            stop_fd,
            stop: AtomicBool::new(false),
            send_failed: AtomicU64::new(0),
            plain,
            gso_on: AtomicBool::new(gso),
            gso: GsoCounters::default(),
            gro_on,
            gro: GroCounters { refused: AtomicU64::new(u64::from(gro_refused)), ..GroCounters::default() },
        });
        let threads = spawn_workers(&shared, pin_workers)?;
        Ok(Engine { port, up_raw_fd, inner: Mutex::new(Some((shared, threads))) })
    }

    /// I/O worker threads (sockets on the port).
    #[getter]
    fn workers(&self) -> PyResult<usize> {
        Ok(self.shared()?.workers.len())
    }

    /// The worker whose socket sends to UDP remote `ip`:`port` (`workers::owner`).
    fn sending_worker(&self, ip: &str, port: u16) -> PyResult<usize> {
        Ok(crate::workers::owner(&parse_addr(ip, port)?, self.shared()?.workers.len()))
    }

    /// Per worker (index = worker), datagrams: `received` from its socket, `sent` by its
    /// socket, `handedOff` to other workers, `taken` from its inbox, `inboxFull` dropped
    /// because its inbox was full, `inboxPeak` (batches waiting at most); `sealed` datagrams
    /// it protected for the transports it owns (several workers), `sealNoKey` and
    /// `sealFailed` those it dropped instead (no context for their keys; protection failed),
    /// `contexts` (outbound SRTP contexts it holds now: the transports it owns); `shares`
    /// (producer packets other workers left for its consumers), `sharesFull` (dropped: its
    /// share queue was full), `sharePeak` (shares waiting at most); where its time went,
    /// nanoseconds: `lockWaitNs` waiting for the router's lock, `routerNs` holding it,
    /// `sealNs` protecting, `sendNs` in the kernel's send calls, which carried `messages`
    /// messages (a GSO message or a plain datagram each).
    fn worker_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let shared = self.shared()?;
        let list = PyList::empty(py);
        for i in 0..shared.mesh.workers() {
            let c = &shared.mesh.inbox(i).counters;
            let d = PyDict::new(py);
            for (k, v) in [
                ("received", &c.received),
                ("sent", &c.sent),
                ("handedOff", &c.handed_off),
                ("taken", &c.taken),
                ("inboxFull", &c.inbox_full),
                ("inboxPeak", &c.inbox_peak),
                ("sealed", &c.sealed),
                ("sealNoKey", &c.seal_no_key),
                ("sealFailed", &c.seal_failed),
                ("contexts", &c.contexts),
                ("shares", &c.shares),
                ("sharesFull", &c.shares_full),
                ("sharePeak", &c.share_peak),
                ("lockWaitNs", &c.lock_wait_ns),
                ("routerNs", &c.router_ns),
                ("sealNs", &c.seal_ns),
                ("sendNs", &c.send_ns),
                ("messages", &c.messages),
            ] {
                d.set_item(k, v.load(Ordering::Relaxed))?;
            }
            let cpu = shared.workers[i].cpu.load(Ordering::Relaxed);
            d.set_item("cpu", (cpu >= 0).then_some(cpu))?;
            list.append(d)?;
        }
        Ok(list)
    }

    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// UDP GRO in use (the setting, unless the kernel refused it).
    #[getter]
    fn gro(&self) -> PyResult<bool> {
        Ok(self.shared()?.gro_on)
    }

    /// UDP GSO in use now (the setting, unless the kernel refused it since).
    #[getter]
    fn gso(&self) -> PyResult<bool> {
        Ok(self.shared()?.gso_on.load(Ordering::Relaxed))
    }

    /// Test hook: SO_NO_CHECK on the UDP socket (no IPv4 UDP checksums), with which the
    /// kernel refuses GSO messages (EINVAL): exercises the fallback on a real socket.
    fn _test_refuse_gso(&self) -> PyResult<()> {
        let shared = self.shared()?;
        for w in &shared.workers {
            io::setsockopt_int(w.socket.as_raw_fd(), libc::SO_NO_CHECK, 1)
                .map_err(|e| PyValueError::new_err(format!("SO_NO_CHECK: {e}")))?;
        }
        Ok(())
    }

    /// A file descriptor that is readable while `drain()` has items.
    fn fileno(&self) -> PyResult<i32> {
        self.shared()?;
        Ok(self.up_raw_fd)
    }

    /// Take every queued STUN/DTLS datagram: (kind, transport, remote_ip, remote_port, data,
    /// protocol), protocol "udp" or "tcp".
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let shared = self.shared()?;
        let items = py.detach(|| {
            let mut st = shared.state.lock();
            let items = st.router.take_upcalls();
            shared.up_fd.reset();
            st.signalled = false;
            items
        });
        let list = PyList::empty(py);
        for u in items {
            let t = PyTuple::new(
                py,
                [
                    u.kind.name().into_pyobject(py)?.into_any(),
                    u.transport.into_pyobject(py)?.into_any(),
                    u.from.addr.ip().to_string().into_pyobject(py)?.into_any(),
                    u.from.addr.port().into_pyobject(py)?.into_any(),
                    PyBytes::new(py, &u.data).into_any(),
                    u.from.via.name().into_pyobject(py)?.into_any(),
                ],
            )?;
            list.append(t)?;
        }
        Ok(list)
    }

    /// Send a STUN/DTLS datagram for `transport` to a remote ("udp": from the engine's port;
    /// "tcp": on that remote's connection, framed).
    #[pyo3(signature = (transport, ip, port, data, protocol = "udp"))]
    fn send(&self, py: Python<'_>, transport: Handle, ip: &str, port: u16, data: &[u8], protocol: &str) -> PyResult<()> {
        let dest = parse_remote(ip, port, protocol)?;
        let n = data.len();
        let shared = self.shared()?;
        let data = data.to_vec();
        py.detach(move || {
            shared.state.lock().router.note_python_send(transport, n)?;
            shared.send_one(dest, &data);
            Ok(())
        })
        .map_err(router_err)
    }

    /// Many DTLS datagrams in one call (a data channel message fanned out to its data
    /// consumers' transports): `(transport, ip, port, data)` each; one lock, sendmmsg batches.
    /// Datagrams of transports the engine no longer has are skipped. Returns how many went.
    fn send_many(&self, py: Python<'_>, items: Vec<(Handle, String, u16, Vec<u8>, String)>) -> PyResult<usize> {
        let mut batch = Vec::with_capacity(items.len());
        for (h, ip, port, data, protocol) in items {
            batch.push((h, parse_remote(&ip, port, &protocol)?, data));
        }
        let shared = self.shared()?;
        Ok(py.detach(move || {
            {
                let mut st = shared.state.lock();
                batch.retain(|(h, _, d)| st.router.note_python_send(*h, d.len()).is_ok());
            }
            let udp = batch.iter().filter(|(_, r, _)| r.via == Via::Udp);
            let r = io::send_batch(shared.socket().as_raw_fd(), udp.map(|(_, r, d)| (&r.addr, d.as_slice())));
            if r.failed > 0 {
                shared.send_failed.fetch_add(r.failed as u64, Ordering::Relaxed);
            }
            if batch.iter().any(|(_, r, _)| r.via == Via::Tcp) {
                shared.send_tcp(batch.iter().filter(|(_, r, _)| r.via == Via::Tcp).map(|(_, r, d)| (r.addr, d.as_slice())));
            }
            batch.len()
        }))
    }

    /// A transport with local ICE credentials: STUN requests reach Python only with a valid
    /// MESSAGE-INTEGRITY keyed with `ice_password`.
    fn add_transport(&self, py: Python<'_>, handle: Handle, local_ufrag: String, ice_password: String) -> PyResult<()> {
        self.control(py, move |r, _, _| r.add_transport(handle, &local_ufrag, &ice_password))
    }

    /// RFC 7675 consent timeout for every transport, seconds (<= 0: consent never expires).
    /// A proven ICE-TCP connection without a valid STUN request for as long is closed too
    /// (`TCP_IDLE_TIMEOUT` where consent never expires).
    fn set_consent_timeout(&self, py: Python<'_>, seconds: f64) -> PyResult<()> {
        let limit = (seconds > 0.0 && seconds.is_finite()).then(|| Duration::from_secs_f64(seconds));
        let shared = self.shared()?;
        py.detach(|| {
            if let Some(tcp) = &shared.tcp {
                tcp.lock().set_idle_timeout(limit.unwrap_or(crate::tcp::TCP_IDLE_TIMEOUT));
            }
        });
        self.control(py, move |r, _, _| {
            r.set_consent_timeout(limit);
            Ok(())
        })
    }

    /// ICE restart: new local credentials for `handle`; the old ones are refused from now
    /// on. Tuples, SRTP keys, producers and consumers are kept.
    fn set_ice_credentials(&self, py: Python<'_>, handle: Handle, local_ufrag: String, ice_password: String) -> PyResult<()> {
        self.control(py, move |r, _, _| r.set_ice_credentials(handle, &local_ufrag, &ice_password))
    }

    #[pyo3(signature = (handle, ip, port, selected, protocol = "udp"))]
    fn bind_tuple(&self, py: Python<'_>, handle: Handle, ip: &str, port: u16, selected: bool, protocol: &str) -> PyResult<()> {
        let addr = parse_remote(ip, port, protocol)?;
        self.control(py, move |r, now, out| r.bind_tuple(now, handle, addr, selected, out))
    }

    /// SRTP keys (one object: `pysfu.dtls.SrtpKeys`, read by attribute); `remote`: the
    /// (ip, port) or (ip, port, protocol) the DTLS handshake completed with, which proves that tuple (media goes only
    /// to proven tuples; without it, the first authenticated SRTP/SRTCP packet from the
    /// nominated tuple proves it).
    #[pyo3(signature = (handle, keys, remote = None))]
    fn set_srtp(&self, py: Python<'_>, handle: Handle, keys: &Bound<'_, PyAny>, remote: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let keys: SrtpKeys = keys.extract().map_err(|e| spec_error(py, "srtp keys", e))?;
        let remote = match remote {
            None => None,
            Some(r) if r.is_none() => None,
            Some(r) => Some(match r.extract::<(String, u16)>() {
                Ok((ip, port)) => Remote::udp(parse_addr(&ip, port)?),
                Err(_) => {
                    let (ip, port, protocol): (String, u16, String) = r.extract()?;
                    parse_remote(&ip, port, &protocol)?
                }
            }),
        };
        self.control(py, move |r, now, out| r.set_srtp(now, handle, &keys, remote, out))
    }

    /// Removes the transport with its producers and consumers (and their consumers): what
    /// went, as {"producers": [...], "consumers": [...]}.
    fn remove_transport<'py>(&self, py: Python<'py>, handle: Handle) -> PyResult<Bound<'py, PyDict>> {
        let removed = self.control(py, move |r, _, _| r.remove_transport(handle))?;
        // A plain/pipe transport's own socket closes with it (its port is free again).
        self.shared()?.plain.close_transport(handle);
        removed_dict(py, &removed)
    }

    /// A plain (or pipe) transport: RTP/RTCP without ICE/DTLS on a UDP socket of its own,
    /// bound on `host` at a free port of `ports` (first, last). `comedia`: the remote address
    /// is learnt from the first valid packet; `srtp`: keys come with `connect_plain` (else
    /// plain RTP); `rtcp_mux` false: a second socket for RTCP (`open_pair`: port + 1 where
    /// the range allows). The ports: (RTP, RTCP if not muxed).
    #[pyo3(signature = (handle, host, ports, comedia = false, srtp = false, rtcp_mux = true))]
    fn add_plain_transport(&self, handle: Handle, host: &str, ports: (u16, u16), comedia: bool, srtp: bool, rtcp_mux: bool) -> PyResult<(u16, Option<u16>)> {
        Python::attach(|py| self.open_plain(py, handle, host, ports, (comedia, srtp, rtcp_mux)))
    }

    /// The remote end of a plain transport: its address (`ip`, `port`; none for comedia),
    /// the remote RTCP port without rtcp-mux (`rtcp_port`), and SRTP keys
    /// (`pysfu.dtls.SrtpKeys`-like, read by attribute), if it uses SRTP.
    #[pyo3(signature = (handle, ip = None, port = None, keys = None, rtcp_port = None))]
    fn connect_plain(&self, py: Python<'_>, handle: Handle, ip: Option<String>, port: Option<u16>, keys: Option<&Bound<'_, PyAny>>, rtcp_port: Option<u16>) -> PyResult<()> {
        let remote = match (ip, port) {
            (Some(ip), Some(port)) => Some(parse_addr(&ip, port)?),
            (None, None) => None,
            _ => return Err(PyValueError::new_err("ip and port go together")),
        };
        let keys: Option<SrtpKeys> = keys.map(|k| k.extract().map_err(|e| spec_error(py, "srtp keys", e))).transpose()?;
        self.control(py, move |r, now, out| r.connect_plain_split(now, handle, remote, rtcp_port, keys.as_ref(), out))
    }

    /// Ask consumer `handle`'s producer for a key frame (for receivers without RTCP).
    fn request_key_frame(&self, py: Python<'_>, handle: Handle) -> PyResult<()> {
        self.control(py, move |r, now, out| r.request_consumer_key_frame(now, handle, out))
    }

    /// Sockets of plain/pipe transports open now (each closes with its transport).
    fn plain_sockets(&self) -> PyResult<usize> {
        Ok(self.shared()?.plain.len())
    }

    fn add_producer(&self, py: Python<'_>, handle: Handle, transport: Handle, spec: &Bound<'_, PyAny>) -> PyResult<()> {
        let spec: ProducerSpec = extract_spec(spec, "producer spec")?;
        self.control(py, move |r, now, _| r.add_producer(now, handle, transport, spec))
    }

    /// Removes the producer and its consumers: what went, as for `remove_transport`.
    fn remove_producer<'py>(&self, py: Python<'py>, handle: Handle) -> PyResult<Bound<'py, PyDict>> {
        let removed = self.control(py, move |r, _, _| r.remove_producer(handle))?;
        removed_dict(py, &removed)
    }

    fn pause_producer(&self, py: Python<'_>, handle: Handle) -> PyResult<()> {
        self.control(py, move |r, _, _| r.pause_producer(handle))
    }

    fn resume_producer(&self, py: Python<'_>, handle: Handle) -> PyResult<()> {
        self.control(py, move |r, now, out| r.resume_producer(now, handle, out))
    }

    fn add_consumer(
        &self,
        py: Python<'_>,
        handle: Handle,
        transport: Handle,
        producer: Handle,
        spec: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let spec: ConsumerSpec = extract_spec(spec, "consumer spec")?;
        self.control(py, move |r, now, out| r.add_consumer(now, handle, transport, producer, spec, out))
    }

    fn remove_consumer(&self, py: Python<'_>, handle: Handle) -> PyResult<()> {
        self.control(py, move |r, _, _| r.remove_consumer(handle))
    }

    fn pause_consumer(&self, py: Python<'_>, handle: Handle) -> PyResult<()> {
        self.control(py, move |r, _, _| r.pause_consumer(handle))
    }

    fn resume_consumer(&self, py: Python<'_>, handle: Handle) -> PyResult<()> {
        self.control(py, move |r, now, out| r.resume_consumer(now, handle, out))
    }

    /// Simulcast consumer: receive at most spatial layer `spatial`; returns the (clamped)
    /// preferred (spatial, temporal) layers. The switch happens at the target's key frame.
    #[pyo3(signature = (handle, spatial, temporal = None))]
    fn set_preferred_layers(&self, py: Python<'_>, handle: Handle, spatial: usize, temporal: Option<u8>) -> PyResult<(usize, u8)> {
        self.control(py, move |r, now, out| r.set_preferred_layers(now, handle, spatial, temporal, out))
    }

    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.control(py, |r, _, _| Ok(r.counts()))?;
        let d = PyDict::new(py);
        d.set_item("transports", c.transports)?;
        d.set_item("producers", c.producers)?;
        d.set_item("consumers", c.consumers)?;
        d.set_item("streams", c.streams)?;
        d.set_item("tuples", c.tuples)?;
        let shared = self.shared()?;
        let tcp = py.detach(|| shared.tcp.as_ref().map_or(0, |t| t.lock().connections()));
        d.set_item("tcp_connections", tcp)?;
        Ok(d)
    }

    fn stats<'py>(&self, py: Python<'py>, handle: Handle) -> PyResult<Bound<'py, PyDict>> {
        let v = self.control(py, move |r, now, _| r.stats(now, handle))?;
        let d = PyDict::new(py);
        for (k, v) in v {
            match v {
                StatValue::Int(i) => d.set_item(k, i)?,
                StatValue::Str(s) => d.set_item(k, s)?,
                StatValue::Bool(b) => d.set_item(k, b)?,
                StatValue::Float(f) => d.set_item(k, f)?,
            }
        }
        Ok(d)
    }

    /// Per-stream RTP statistics (loss, NACKs, PLIs, RTT, jitter, bitrate): a list of dicts.
    fn rtp_stats<'py>(&self, py: Python<'py>, handle: Handle) -> PyResult<Bound<'py, PyList>> {
        let records = self.control(py, move |r, now, _| r.rtp_stats(now, handle))?;
        let list = PyList::empty(py);
        for rec in records {
            let d = PyDict::new(py);
            for (k, v) in rec {
                match v {
                    StatValue::Int(i) => d.set_item(k, i)?,
                    StatValue::Str(s) => d.set_item(k, s)?,
                    StatValue::Bool(b) => d.set_item(k, b)?,
                    StatValue::Float(f) => d.set_item(k, f)?,
                }
            }
            list.append(d)?;
        }
        Ok(list)
    }

    /// Engine-wide counters that never go down (removed objects' counts stay in).
    fn totals<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let t = self.control(py, |r, _, _| Ok(r.totals()))?;
        let d = PyDict::new(py);
        for (k, v) in t.items() {
            d.set_item(k, v)?;
        }
        let shared = self.shared()?;
        let accepted = py.detach(|| shared.tcp.as_ref().map_or(0, |t| t.lock().accepted));
        d.set_item("tcpConnectionsAccepted", accepted)?;
        d.set_item("gsoMessages", shared.gso.messages.load(Ordering::Relaxed))?;
        d.set_item("gsoDatagrams", shared.gso.datagrams.load(Ordering::Relaxed))?;
        d.set_item("gsoRefused", shared.gso.refused.load(Ordering::Relaxed))?;
        d.set_item("groBuffers", shared.gro.buffers.load(Ordering::Relaxed))?;
        d.set_item("groDatagrams", shared.gro.datagrams.load(Ordering::Relaxed))?;
        d.set_item("groRefused", shared.gro.refused.load(Ordering::Relaxed))?;
        Ok(d)
    }

    fn drops<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let shared = self.shared()?;
        let drops = self.control(py, |r, _, _| Ok(r.drops().clone()))?;
        let d = PyDict::new(py);
        for (k, v) in drops.iter() {
            let v = if k == DropReason::SendFailed.name() { v + shared.send_failed.load(Ordering::Relaxed) } else { v };
            d.set_item(k, v)?;
        }
        // What the TCP edge refused, dropped and closed (zeros without TCP: stable keys).
        let tcp = py.detach(|| shared.tcp.as_ref().map(|t| t.lock().counters).unwrap_or_default());
        for (k, v) in tcp.iter() {
            d.set_item(k, v)?;
        }
        // Datagrams a worker made for another worker whose inbox was full (workers.rs).
        d.set_item("workerInboxFull", shared.mesh.inbox_full())?;
        d.set_item("workerSharesFull", shared.mesh.shares_full())?;
        // Datagrams an owner worker could not protect (sealing.rs): no keys (the transport
        // went or was re-keyed meanwhile), or protection failed.
        let (no_key, failed) = shared.mesh.seal_drops();
        d.set_item("workerSealNoKey", no_key)?;
        d.set_item("workerSealFailed", failed)?;
        Ok(d)
    }

    /// The message of the last panic caught on the I/O thread since the previous call, if any.
    fn take_panic(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let shared = self.shared()?;
        Ok(py.detach(|| shared.state.lock().last_panic.take()))
    }

    /// Test hook for panic safety: `"io"` makes the I/O thread panic on the next datagram it
    /// processes; `"control"` panics inside a control call (→ ValueError); `"pyo3"` panics in
    /// the method itself (→ pyo3 PanicException).
    fn _test_panic(&self, py: Python<'_>, place: &str) -> PyResult<()> {
        match place {
            "io" => {
                self.shared()?.state.lock().panic_next = true;
                Ok(())
            }
            "control" => self.control(py, |_, _, _| -> Result<(), RouterError> { panic!("test panic in a control call") }),
            "pyo3" => panic!("test panic in an Engine method"),
            other => Err(PyValueError::new_err(format!("unknown panic place {other:?}"))),
        }
    }

    /// Stop the I/O thread and close the socket (the port is free afterwards). Idempotent.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.shutdown());
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _a: &Bound<'_, PyAny>, _b: &Bound<'_, PyAny>, _c: &Bound<'_, PyAny>) {
        self.close(py);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
