//! Whether to pin workers to cores. Pinning pays when the workers have their cores to
//! themselves; on a host shared with other busy processes it measured up to 2x the CPU per copy
//! (a pinned worker cannot move off a core the load generator or another process is using).
//! The cores are ours when the process's CPU set was narrowed on purpose to one core per worker
//! (a cpuset, `taskset`, a Kubernetes static CPU policy): a strict subset of the online CPUs,
//! as large as the worker count. [`decide`] is the rule; the engine applies it.

/// The `--pin` / `--no-pin` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pin {
    /// Pin only when the cores are ours (the default).
    #[default]
    Auto,
    /// Always pin (`--pin`).
    On,
    /// Never pin (`--no-pin`).
    Off,
}

/// Whether to pin `workers` workers, given how many CPUs the process may run on and how many
/// are online; with the reason, for the log.
pub fn decide(pin: Pin, workers: usize, allowed: usize, online: usize) -> (bool, String) {
    match pin {
        Pin::On => (true, "pinning workers: requested with --pin".into()),
        Pin::Off => (false, "not pinning workers: requested with --no-pin".into()),
        Pin::Auto if allowed == workers && allowed < online => (
            true,
            format!(
                "pinning workers: the process's CPU set holds {allowed} of {online} online CPUs, one per worker (dedicated cores)"
            ),
        ),
        Pin::Auto if allowed >= online => (
            false,
            format!(
                "not pinning workers: the process may run on all {online} online CPUs, shared with whatever else runs here (--pin to force)"
            ),
        ),
        Pin::Auto => (
            false,
            format!(
                "not pinning workers: {workers} workers on a CPU set of {allowed} (pinning wants one CPU per worker; --pin to force)"
            ),
        ),
    }
}

/// CPUs online on this host.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions; a negative result means "unknown".
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Puts the calling thread behind the workers in the scheduler's eyes: `SCHED_BATCH` (a thread
/// that wakes up does not preempt the one running) at nice 10. For the slow-path threads (the
/// WebRTC transport and its receiver), which share cores with the workers: a burst of
/// handshakes then waits for a worker's batch to end instead of cutting it in two. Best effort;
/// returns what failed.
pub fn yield_to_workers() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: gettid has no preconditions; PRIO_PROCESS with a thread id sets that thread's
    // nice value on Linux.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_only_on_dedicated_cores_unless_forced() {
        // A shared 2-core VM: the process may use both CPUs.
        assert!(!decide(Pin::Auto, 2, 2, 2).0);
        assert!(!decide(Pin::Auto, 1, 2, 2).0);
        assert!(decide(Pin::Auto, 1, 2, 2).1.contains("all 2 online CPUs"));
        // A cpuset of 4 dedicated CPUs on a 64-CPU host, 4 workers.
        assert!(decide(Pin::Auto, 4, 4, 64).0);
        // A cpuset that does not match the worker count.
        assert!(!decide(Pin::Auto, 2, 4, 64).0);
        assert!(decide(Pin::On, 2, 2, 2).0);
        assert!(!decide(Pin::Off, 4, 4, 64).0);
    }
}
