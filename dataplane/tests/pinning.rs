//! Pinning by default only on dedicated cores: a bridge started on all of a host's CPUs does not
//! pin its workers and says why; `--pin` pins them; a bridge whose CPU set is narrowed to one
//! CPU per worker (here with `taskset`) pins them by itself. Checked on the worker threads'
//! real affinity (`/proc/PID/task/*/status`).

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

/// Starts a bridge (optionally under `taskset -c CPUS`), returns each worker thread's
/// `Cpus_allowed_list` and the log.
fn start(extra: &[&str], taskset: Option<&str>) -> (Vec<String>, String) {
    let bin = env!("CARGO_BIN_EXE_ringbridge");
    let mut cmd = match taskset {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus, bin]);
            c
        }
        None => Command::new(bin),
    };
    let mut child = cmd
        .args([
            "--engine",
            "mio",
            "--workers",
            "1",
            "--media",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("ready"), "{line}");
    // The ready line comes after every worker has started and pinned itself.
    let mut affinity = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap() {
        let dir = t.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "mio-0" {
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            let list = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string();
            affinity.push(list);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    (affinity, log)
}

fn online() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn pins_only_when_the_cores_are_dedicated_or_asked() {
    let all = format!("0-{}", online() - 1);
    let (aff, log) = start(&[], None);
    assert!(log.contains("not pinning workers"), "{log}");
    if online() > 1 {
        assert_eq!(aff, [all], "unpinned: the worker may run anywhere");
    }
    let (aff, log) = start(&["--pin"], None);
    assert!(
        log.contains("pinning workers: requested with --pin"),
        "{log}"
    );
    assert_eq!(aff, ["0"]);
    if online() > 1 {
        // One dedicated CPU for one worker: pinned without being asked.
        let (aff, log) = start(&[], Some("1"));
        assert!(log.contains("dedicated cores"), "{log}");
        assert_eq!(aff, ["1"]);
    }
}
