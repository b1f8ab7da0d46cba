//! The soak's fleet: real processes on loopback (etcd, two control instances of one shard,
//! bridges), started, signalled and watched by the run. Each keeps its log in the run's
//! directory; every exit the run did not cause is a crash.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ringbridge_edge::ready::Ready;

/// A loopback TCP port nobody holds now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A loopback UDP port nobody holds now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A binary next to this one (the workspace's target directory).
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} missing: build it (make chaos builds ringbridge and ringbridge-control)",
            p.display()
        );
    }
    Ok(p)
}

/// Sends `sig` (e.g. `rustix::process::Signal::STOP`) to process `pid`.
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Resident memory (KiB) and open descriptors of process `pid`, from `/proc`.
pub fn rss_and_fds(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// One process of the fleet.
pub struct Proc {
    /// Its name in the report (e.g. `bridge eu-1`, `control a`, `etcd`).
    pub name: String,
    child: Child,
    /// When it started.
    pub started: Instant,
    /// Its ready line (empty for etcd).
    pub ready: Option<Ready>,
    /// The run stopped it on purpose (its exit is no crash).
    pub expected_exit: bool,
}

impl Proc {
    /// Starts `program` with `args`, its stderr into `log`; with `ready`, waits (at most 15 s)
    /// for its ready line on stdout.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        ready: bool,
    ) -> anyhow::Result<Self> {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| log.display().to_string())?;
        let mut child = Command::new(program)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_RUST_LOG").unwrap_or_else(|_| {
                    // The control plane's decisions (takeovers, moves) and the bridges'
                    // programming are what a reader of a violation needs.
                    if name.starts_with("control") || name.starts_with("bridge") {
                        "info"
                    } else {
                        "warn"
                    }
                    .into()
                }),
            )
            .stdin(Stdio::null())
            .stdout(if ready { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let ready = match child.stdout.take() {
            None => None,
            Some(out) => {
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(out);
                    let mut line = String::new();
                    let _ = r.read_line(&mut line);
                    let _ = tx.send(line);
                    // Anything more is drained so the process never blocks on its stdout.
                    let _ = std::io::copy(&mut r, &mut std::io::sink());
                });
                let line = rx.recv_timeout(Duration::from_secs(15)).unwrap_or_default();
                match Ready::parse(&line) {
                    Some(r) => Some(r),
                    None => {
                        let _ = child.kill();
                        let _ = child.wait();
                        bail!(
                            "{name}: not ready within 15 s (printed {line:?}; see {})",
                            log.display()
                        );
                    }
                }
            }
        };
        Ok(Proc {
            name: name.into(),
            child,
            started: Instant::now(),
            ready,
            expected_exit: false,
        })
    }

    /// The ready line's `key`.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.ready.as_ref()?.get(key)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP.
    pub fn pause(&self) {
        signal(self.pid(), rustix::process::Signal::STOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal(self.pid(), rustix::process::Signal::CONT);
    }

    /// SIGTERM (a bridge with a control plane drains, then exits); its exit is expected.
    pub fn term(&mut self) {
        self.expected_exit = true;
        signal(self.pid(), rustix::process::Signal::TERM);
    }

    /// SIGKILL and reap; its exit is expected.
    pub fn kill(&mut self) {
        self.expected_exit = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it has exited (reaping it), and how.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process takes SIGKILL too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops, when dropped, the bridges the control instances started detached (children of
/// nobody the run holds): every process with `--control LIST` on its command line.
pub struct Detached {
    needle: Vec<u8>,
}

impl Detached {
    /// For bridges started with `--control list`.
    pub fn new(list: &str) -> Self {
        let mut needle = b"--control\0".to_vec();
        needle.extend_from_slice(list.as_bytes());
        needle.push(0);
        Self { needle }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if cmd.windows(self.needle.len()).any(|w| w == self.needle) {
                signal(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// A real etcd server on loopback with its data in the run's directory.
pub struct Etcd {
    /// The process.
    pub proc: Proc,
    /// `127.0.0.1:PORT` of its client URL.
    pub endpoint: String,
    args: Vec<String>,
    log: PathBuf,
}

impl Etcd {
    /// Starts etcd (Debian's `etcd`, on the PATH) with its data in `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let (client, peer) = (free_port(), free_port());
        let c = format!("http://127.0.0.1:{client}");
        let p = format!("http://127.0.0.1:{peer}");
        let data = dir.join("etcd-data");
        let args: Vec<String> = [
            "--name",
            "chaos",
            "--data-dir",
            data.to_str().unwrap_or("etcd-data"),
            "--listen-client-urls",
            &c,
            "--advertise-client-urls",
            &c,
            "--listen-peer-urls",
            &p,
            "--initial-advertise-peer-urls",
            &p,
            "--initial-cluster",
            &format!("chaos={p}"),
            "--log-level",
            "error",
        ]
        .map(String::from)
        .to_vec();
        let log = dir.join("etcd.log");
        let mut e = Etcd {
            proc: Self::spawn(&args, &log)?,
            endpoint: format!("127.0.0.1:{client}"),
            args,
            log,
        };
        e.wait_ready()?;
        Ok(e)
    }

    fn spawn(args: &[String], log: &Path) -> anyhow::Result<Proc> {
        Proc::start("etcd", Path::new("etcd"), args, log, false)
            .context("starting etcd (Debian's etcd-server: make chaos installs it with apt-get)")
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let addr: SocketAddr = self.endpoint.parse()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(s) = self.proc.exited() {
                bail!("etcd exited ({s}); see {}", self.log.display());
            }
            if Instant::now() > deadline {
                bail!("etcd not listening within 20 s; see {}", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// SIGKILL, then a new process on the same data and ports.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again after [`Etcd::kill`].
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.proc = Self::spawn(&self.args, &self.log)?;
        self.wait_ready()
    }
}
