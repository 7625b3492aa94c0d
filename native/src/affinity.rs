//! CPU affinity of the I/O workers (`Engine(pin_workers=True)`).
//!
//! With more than one worker and at least one per CPU the process may run on (its affinity
//! when the engine starts, the `workers` default), worker `i` is pinned to the `i`-th CPU of
//! that set (round robin). A worker then keeps its consumers' state,
//! SRTP contexts and socket buffers in one core's caches, and two workers never wait for one
//! CPU while the other is free of them (the scheduler otherwise moves a woken worker next to
//! its waker). Measured on 2 vCPUs with the load generator on the same machine (GCM, 100-500
//! viewers): -7 to -15 % CPU per forwarded packet, -15 to -22 % p50 (README "Pinned workers").
//!
//! Linux only (sched_setaffinity); where the call fails the worker runs unpinned and says so
//! (`Engine.worker_stats()[i]["cpu"]` is None).

/// The CPUs this process may run on (its affinity mask), ascending; empty if unknown.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel fills at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads the set within CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// The CPU worker `me` of `workers` goes to, from `allowed` (round robin), or None when there
/// is nothing to separate (one worker), no CPU is known, or the workers do not cover every
/// allowed CPU: pinning a few workers to the first CPUs would stack several processes (nodes
/// on one host, each given fewer workers than cores) on the same cores; an operator who
/// places processes gives each its own CPU set (taskset, cpuset), whose workers then cover it.
pub fn cpu_for(me: usize, workers: usize, allowed: &[usize]) -> Option<usize> {
    if workers < 2 || allowed.is_empty() || workers < allowed.len() {
        return None;
    }
    Some(allowed[me % allowed.len()])
}

/// Pin the calling thread to `cpu`.
pub fn pin_current(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within CPU_SETSIZE
    // (checked above); thread 0 is the caller.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_is_left_to_the_scheduler() {
        assert_eq!(cpu_for(0, 1, &[0, 1, 2, 3]), None);
    }

    #[test]
    fn workers_take_the_allowed_cpus_in_turn() {
        let allowed = [2, 5, 7];
        let got: Vec<_> = (0..5).map(|i| cpu_for(i, 5, &allowed)).collect();
        assert_eq!(got, vec![Some(2), Some(5), Some(7), Some(2), Some(5)]);
        assert_eq!(cpu_for(0, 2, &[]), None);
    }

    #[test]
    fn fewer_workers_than_cpus_are_left_to_the_scheduler() {
        assert_eq!(cpu_for(0, 2, &[0, 1, 2]), None);
        assert_eq!(cpu_for(1, 3, &[0, 1, 2]), Some(1));
    }

    #[test]
    fn a_thread_pinned_runs_on_that_cpu_only() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty());
        let cpu = *allowed.last().unwrap();
        let seen = std::thread::spawn(move || {
            pin_current(cpu).unwrap();
            (allowed_cpus(), unsafe { libc::sched_getcpu() })
        })
        .join()
        .unwrap();
        assert_eq!(seen.0, vec![cpu]);
        assert_eq!(seen.1, cpu as i32);
        assert!(pin_current(libc::CPU_SETSIZE as usize).is_err());
    }
}
