//! What one sleep and wake-up of a thread costs on *this* host, in CPU and in time: the fixed
//! cost a media worker pays per receive batch (it sleeps in epoll_wait between batches, and a
//! worker handed a share is woken through an eventfd), whatever the batch fans out to.
//!
//! A waker thread sleeps `gap` µs (as the time between two ingress batches), then writes an
//! eventfd; a sleeper thread blocked in epoll_wait on it wakes, reads it and sleeps again.
//! Each thread's CPU comes from its own CPU clock (CLOCK_THREAD_CPUTIME_ID), the wake-up delay
//! from the monotonic clock (write to epoll_wait's return).
//!
//! Usage: pysfu-wakecost [--gaps 200,2000,12500] [--cycles 1000]
//! Prints one JSON object: per gap, the sleeper's and the waker's CPU µs per cycle and the
//! wake-up delay's median and 90th percentile in µs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    gaps: Vec<u64>,
    cycles: usize,
}

fn parse_args() -> Args {
    let mut a = Args { gaps: vec![200, 2_000, 12_500], cycles: 1_000 };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < argv.len() {
        let v = &argv[i + 1];
        match argv[i].as_str() {
            "--gaps" => a.gaps = v.split(',').map(|g| g.parse().expect("--gaps µs,µs")).collect(),
            "--cycles" => a.cycles = v.parse().expect("--cycles N"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// This thread's CPU time so far, in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One gap's figures.
struct Measured {
    sleeper_cpu_us: f64,
    waker_cpu_us: f64,
    delays_us: Vec<f64>,
}

fn measure(gap: Duration, cycles: usize) -> Measured {
    // SAFETY: plain eventfd and epoll set-up on fds this function owns and closes.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(efd >= 0, "eventfd failed");
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0, "epoll_create1 failed");
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 1 };
    // SAFETY: valid epoll fd, eventfd and event.
    assert_eq!(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, efd, &mut ev) }, 0);
    let origin = Instant::now();
    let written_at = Arc::new(AtomicU64::new(0));
    let w2 = written_at.clone();
    let sleeper = std::thread::spawn(move || {
        let start = thread_cpu_ns();
        let mut delays = Vec::with_capacity(cycles);
        let mut out = [libc::epoll_event { events: 0, u64: 0 }];
        // Writes seen: two writes before one read count as one wake-up and two cycles.
        let mut seen = 0u64;
        while seen < cycles as u64 {
            // SAFETY: valid epoll fd and a one-event buffer.
            while unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 1, -1) } != 1 {}
            let woke = origin.elapsed().as_nanos() as u64;
            delays.push(woke.saturating_sub(w2.load(Ordering::Acquire)) as f64 / 1_000.0);
            let mut v = 0u64;
            // SAFETY: reading 8 bytes into a u64 from our eventfd.
            if unsafe { libc::read(efd, (&mut v as *mut u64).cast(), 8) } == 8 {
                seen += v;
            }
        }
        (thread_cpu_ns() - start, delays)
    });
    let start = thread_cpu_ns();
    for _ in 0..cycles {
        std::thread::sleep(gap);
        written_at.store(origin.elapsed().as_nanos() as u64, Ordering::Release);
        let v = 1u64;
        // SAFETY: writing 8 bytes from a u64 to our eventfd.
        unsafe { libc::write(efd, (&v as *const u64).cast(), 8) };
    }
    let waker_ns = thread_cpu_ns() - start;
    let (sleeper_ns, delays_us) = sleeper.join().expect("sleeper thread");
    // SAFETY: closing the fds opened above.
    unsafe {
        libc::close(ep);
        libc::close(efd);
    }
    Measured {
        sleeper_cpu_us: sleeper_ns as f64 / 1_000.0 / delays_us.len().max(1) as f64,
        waker_cpu_us: waker_ns as f64 / 1_000.0 / cycles as f64,
        delays_us,
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let args = parse_args();
    assert!(args.cycles > 0, "--cycles must be positive");
    let rows: Vec<String> = args
        .gaps
        .iter()
        .map(|&gap| {
            let mut m = measure(Duration::from_micros(gap), args.cycles);
            m.delays_us.sort_by(f64::total_cmp);
            format!(
                "{{\"gap_us\": {gap}, \"cycles\": {}, \"wakes\": {}, \"sleeper_cpu_us_per_wake\": {:.2}, \"waker_cpu_us_per_cycle\": {:.2}, \"wake_delay_us_p50\": {:.1}, \"wake_delay_us_p90\": {:.1}}}",
                args.cycles,
                m.delays_us.len(),
                m.sleeper_cpu_us,
                m.waker_cpu_us,
                quantile(&m.delays_us, 0.5),
                quantile(&m.delays_us, 0.9)
            )
        })
        .collect();
    println!("{{\"bench\": \"wakecost\", \"points\": [{}]}}", rows.join(", "));
}
