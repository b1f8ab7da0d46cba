//! CPU time of a process, summed over its threads, from `/proc/PID/task/*/schedstat`
//! (nanoseconds), falling back to `/proc/PID/stat` (clock ticks).

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

fn stat(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // /proc reports in USER_HZ, which the Linux ABI fixes at 100.
    Some(ticks * 10_000_000)
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
}
