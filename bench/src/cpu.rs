//! CPU time of a process, summed over its threads, from `/proc/PID/task/*/schedstat`
//! (nanoseconds), falling back to `/proc/PID/stat` (clock ticks); and its user-mode share,
//! sampled with `perf record -e cpu-clock` ([`UserSampler`]): `/proc`'s utime/stime split comes
//! from tick sampling, which is biased for a process that runs in short bursts (it read 0% and
//! 100% user for the same forwarder in two runs), and this VM has no hardware counters.

/// Total CPU time of process `pid` in nanoseconds, or `None` if it cannot be read.
pub fn process_ns(pid: u32) -> Option<u64> {
    schedstat(pid).or_else(|| stat(pid))
}

fn schedstat(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = t.ok()?.path().join("schedstat");
        // A thread may exit between listing and reading; it then no longer counts.
        if let Ok(s) = std::fs::read_to_string(path) {
            total += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// (utime, stime) in clock ticks.
fn stat_fields(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

fn stat(pid: u32) -> Option<u64> {
    let (user, system) = stat_fields(pid)?;
    // /proc reports in USER_HZ, which the Linux ABI fixes at 100.
    Some((user + system) * 10_000_000)
}

/// Samples where a process spends its CPU time (`perf record -e cpu-clock`, hrtimer-driven, so
/// unbiased), to split it into user and kernel time.
#[derive(Debug)]
pub struct UserSampler {
    child: std::process::Child,
    file: std::path::PathBuf,
}

impl UserSampler {
    /// Starts sampling `pid`; `None` when `perf` is not available.
    pub fn start(pid: u32) -> Option<Self> {
        let file =
            std::env::temp_dir().join(format!("ringbridge-perf-{pid}-{}.data", std::process::id()));
        let child = std::process::Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", "2999", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        // perf needs a moment to attach before the window starts.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Some(Self { child, file })
    }

    /// Stops sampling; the fraction of samples in user mode (`None` if nothing was sampled).
    pub fn finish(mut self) -> Option<f64> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let out = std::process::Command::new("perf")
            .args(["report", "-q", "--stdio", "--sort", "dso", "-i"])
            .arg(&self.file)
            .output()
            .ok()?;
        let _ = std::fs::remove_file(&self.file);
        let text = String::from_utf8_lossy(&out.stdout);
        let (mut user, mut all) = (0.0, 0.0);
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(pct), Some(dso)) = (f.next(), f.next()) else {
                continue;
            };
            let Ok(pct) = pct.trim_end_matches('%').parse::<f64>() else {
                continue;
            };
            all += pct;
            if !dso.starts_with("[kernel") {
                user += pct;
            }
        }
        (all > 0.0).then(|| user / all)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_cpu_time_and_it_grows() {
        let me = std::process::id();
        let a = super::process_ns(me).unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let b = super::process_ns(me).unwrap();
        assert!(b > a, "{a} -> {b}");
        assert!(super::stat(me).is_some());
    }

    #[test]
    fn thread_cpu_time_grows_and_threads_are_listed() {
        let a = super::thread_ns();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(super::thread_ns() > a);
        let threads = super::threads(std::process::id());
        assert!(!threads.is_empty());
        assert!(threads.iter().any(|t| t.run_ns > 0 && t.slices > 0));
    }
}

/// The rig on one CPU and the forwarders it starts on another, so a `--find-max` ramp measures
/// what one core forwards rather than how the scheduler shares two cores between the rig's
/// threads and the forwarder. Used from a thread of its own: pinning is not undone.
#[derive(Debug, Clone, Copy)]
pub struct SplitCpus {
    rig: core_affinity::CoreId,
    forwarder: core_affinity::CoreId,
}

impl SplitCpus {
    /// The last two CPUs the calling thread may use (the rig on the first, the forwarder on the
    /// second), or `None` with fewer than two.
    pub fn last_two() -> Option<Self> {
        let ids = core_affinity::get_core_ids()?;
        match ids.as_slice() {
            [.., rig, forwarder] => Some(Self {
                rig: *rig,
                forwarder: *forwarder,
            }),
            _ => None,
        }
    }

    /// The (rig, forwarder) CPU numbers.
    pub fn cpus(&self) -> (usize, usize) {
        (self.rig.id, self.forwarder.id)
    }

    /// Call before starting a forwarder: the process inherits the forwarder CPU.
    pub fn for_forwarder(&self) -> anyhow::Result<()> {
        pin_to(self.forwarder)
    }

    /// Call before running the rig: its threads inherit the rig CPU.
    pub fn for_rig(&self) -> anyhow::Result<()> {
        pin_to(self.rig)
    }
}

/// Pins the calling thread, or says which CPU could not be had (the report would be wrong).
fn pin_to(cpu: core_affinity::CoreId) -> anyhow::Result<()> {
    if core_affinity::set_for_current(cpu) {
        Ok(())
    } else {
        anyhow::bail!("could not pin the thread to CPU {}", cpu.id)
    }
}

/// CPU time of the calling thread in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`: the scheduler's
/// own accounting, not tick sampling).
pub fn thread_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(
        rc, 0,
        "CLOCK_THREAD_CPUTIME_ID is always available on Linux"
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One thread's scheduler figures, from `/proc/PID/task/TID/{comm,schedstat}`.
#[derive(Debug, Clone, Default)]
pub struct ThreadCpu {
    /// The thread's name.
    pub name: String,
    /// Time on a CPU, ns.
    pub run_ns: u64,
    /// Time runnable but waiting for a CPU, ns.
    pub wait_ns: u64,
    /// Times it was put on a CPU (each wakeup or preemption ends one).
    pub slices: u64,
}

/// The scheduler figures of every thread of process `pid`. A thread that exits while being
/// read is left out.
pub fn threads(pid: u32) -> Vec<ThreadCpu> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|t| {
        let path = t.ok()?.path();
        let name = std::fs::read_to_string(path.join("comm")).ok()?;
        let stat = std::fs::read_to_string(path.join("schedstat")).ok()?;
        let mut f = stat.split_whitespace().map(|v| v.parse::<u64>().ok());
        Some(ThreadCpu {
            name: name.trim().to_string(),
            run_ns: f.next()??,
            wait_ns: f.next()??,
            slices: f.next()??,
        })
    })
    .collect()
}
