//! The process actuator: local `ringbridge` processes, children of this control plane, with a
//! backoff for bridges that exit at once.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Actuator, BoxFuture};

/// Bridges that exited soon after they started, and the backoff they earn before the next
/// start: `first`, doubled with each quick exit up to `max`; reset once a bridge stays up.
/// Sans-IO: time is an argument.
#[derive(Debug, Clone, Default)]
pub struct Restarts {
    quick_exits: u32,
    hold_until: Option<Instant>,
    last: String,
}

impl Restarts {
    /// A bridge exited (or gave up booting) soon after starting, at `now`, because of `why`;
    /// returns the backoff it earns.
    pub fn failed(
        &mut self,
        now: Instant,
        why: String,
        first: Duration,
        max: Duration,
    ) -> Duration {
        self.quick_exits = self.quick_exits.saturating_add(1);
        let delay = first
            .saturating_mul(1u32 << (self.quick_exits - 1).min(20))
            .min(max);
        self.hold_until = Some(now + delay);
        self.last = why;
        delay
    }

    /// A bridge stayed up: starts are free again.
    pub fn stayed_up(&mut self) {
        *self = Self::default();
    }

    /// Quick exits since a bridge last stayed up.
    pub fn quick_exits(&self) -> u32 {
        self.quick_exits
    }

    /// How long starts still wait at `now` (none: a start may go).
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        self.hold_until
            .map(|t| t.saturating_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Bridges a start of `n` may start at `now`: none while backing off, one at a time while
    /// the last bridges exited quickly (until one stays up), else `n`.
    pub fn allowed(&self, n: u32, now: Instant) -> u32 {
        match (self.wait(now), self.quick_exits) {
            (Some(_), _) => 0,
            (None, 0) => n,
            (None, _) => n.min(1),
        }
    }

    /// The state as the API shows it; empty when starts are free.
    pub fn status(&self, now: Instant) -> String {
        if self.quick_exits == 0 {
            return String::new();
        }
        let n = self.quick_exits;
        let exits = if n == 1 { "quick exit" } else { "quick exits" };
        match self.wait(now) {
            Some(d) => format!(
                "backing off {:.0} s after {n} {exits} (last: {})",
                d.as_secs_f64().ceil(),
                self.last
            ),
            None => format!(
                "starting one bridge at a time after {n} {exits} (last: {})",
                self.last
            ),
        }
    }
}

/// Settings of the [`ProcessActuator`].
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// The `ringbridge` binary.
    pub binary: PathBuf,
    /// Control plane URLs the bridges register with (comma-separated: the bridge reports to
    /// the first that takes it).
    pub control_url: String,
    /// The bridges outlive this process (no `--exit-with-parent`, not killed when it exits):
    /// another control instance of the shard takes them over (see [`local_bridge`]).
    pub detached: bool,
    /// Region of the bridges it starts.
    pub region: String,
    /// Capacity they report stress against, packets/s.
    pub capacity_pps: f64,
    /// Bridge ids are this prefix, a dash and a counter.
    pub id_prefix: String,
    /// More arguments for each bridge (e.g. `--engine mio --workers 1`).
    pub extra_args: Vec<String>,
    /// A bridge that has not registered by then is killed and no longer counted as booting.
    pub boot_timeout: Duration,
    /// How long a stopped bridge gets to exit on SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// Each bridge's log goes to `ID.log` here (none: discarded).
    pub log_dir: Option<PathBuf>,
    /// Backoff after the first bridge that exits (or does not register) soon after starting;
    /// it doubles with each such bridge, up to `backoff_max`.
    pub backoff: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// A bridge registered and running this long after it started has stayed up: the backoff
    /// is reset. One that exits sooner counts as a quick exit.
    pub stable_after: Duration,
}

struct Running {
    child: tokio::process::Child,
    started: Instant,
    /// The fleet knows it.
    registered: bool,
    /// Its exit was counted, or it stayed up: nothing more to learn from it.
    settled: bool,
}

/// Runs bridges as local child processes.
pub struct ProcessActuator {
    cfg: ProcessConfig,
    children: Mutex<BTreeMap<String, Running>>,
    next: Mutex<u64>,
    restarts: Mutex<Restarts>,
}

impl std::fmt::Debug for ProcessActuator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessActuator")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl ProcessActuator {
    /// An actuator with `cfg`; the binary must be an executable file.
    pub fn new(cfg: ProcessConfig) -> anyhow::Result<Self> {
        executable(&cfg.binary).map_err(anyhow::Error::msg)?;
        Ok(Self {
            cfg,
            children: Mutex::new(BTreeMap::new()),
            next: Mutex::new(0),
            restarts: Mutex::new(Restarts::default()),
        })
    }

    fn children(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn restarts(&self) -> std::sync::MutexGuard<'_, Restarts> {
        self.restarts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a quick exit (or a failed start) of `bridge` and logs the backoff it earns.
    fn failed(&self, bridge: &str, why: String) {
        let (first, max) = (self.cfg.backoff, self.cfg.backoff_max);
        let mut r = self.restarts();
        let delay = r.failed(Instant::now(), format!("{bridge} {why}"), first, max);
        tracing::warn!(
            %bridge,
            quick_exits = r.quick_exits(),
            "bridge {why}; backing off {:.1} s before starting another",
            delay.as_secs_f64()
        );
    }

    /// Looks at every child: marks those in `registered` (when known), counts quick exits and
    /// bridges that stayed up, drops those that failed to boot; returns how many still boot.
    fn reap(&self, registered: Option<&HashSet<String>>) -> u32 {
        let mut failed = Vec::new();
        let mut stayed_up = false;
        let mut n = 0;
        let mut children = self.children();
        for (id, r) in children.iter_mut() {
            r.registered |= registered.is_some_and(|reg| reg.contains(id));
            let status = r.child.try_wait();
            let up_for = r.started.elapsed();
            let exit = match &status {
                Ok(None) => None,
                Ok(Some(s)) => Some(s.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if r.registered {
                if r.settled {
                    continue;
                }
                match exit {
                    Some(s) if up_for < self.cfg.stable_after => {
                        r.settled = true;
                        failed.push((id.clone(), exit_reason(up_for, &s), false));
                    }
                    Some(_) => r.settled = true,
                    None if up_for >= self.cfg.stable_after => {
                        r.settled = true;
                        stayed_up = true;
                    }
                    None => {}
                }
                continue;
            }
            match exit {
                Some(s) => failed.push((id.clone(), exit_reason(up_for, &s), true)),
                None if up_for > self.cfg.boot_timeout => failed.push((
                    id.clone(),
                    format!(
                        "did not register within {} s",
                        self.cfg.boot_timeout.as_secs()
                    ),
                    true,
                )),
                None => n += 1,
            }
        }
        for (id, _, forget) in &failed {
            if *forget && let Some(mut r) = children.remove(id) {
                let _ = r.child.start_kill();
            }
        }
        drop(children);
        if stayed_up {
            self.restarts().stayed_up();
        }
        for (id, why, _) in failed {
            self.failed(&id, why);
        }
        n
    }

    /// A detached bridge of this shard's (started by any of its instances) running here.
    fn adoptable(&self, bridge: &str) -> Option<rustix::process::Pid> {
        local_bridge(&self.cfg.binary, bridge, Some(&self.cfg.control_url))
    }

    fn spawn_one(&self) -> anyhow::Result<String> {
        // Detached: the next id no bridge process here holds (an earlier instance's bridge
        // may still run under it).
        let id = {
            let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                *n += 1;
                let id = format!("{}-{}", self.cfg.id_prefix, *n);
                if !self.cfg.detached || local_bridge(&self.cfg.binary, &id, None).is_none() {
                    break id;
                }
            }
        };
        let mut cmd = tokio::process::Command::new(&self.cfg.binary);
        cmd.args([
            "--control",
            &self.cfg.control_url,
            "--bridge-id",
            &id,
            "--region",
            &self.cfg.region,
            "--capacity-pps",
            &self.cfg.capacity_pps.to_string(),
            "--media",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
        ])
        .args((!self.cfg.detached).then_some("--exit-with-parent"))
        .envs(
            self.cfg
                .detached
                .then_some((ADOPTABLE_ENV, self.cfg.control_url.as_str())),
        )
        .args(&self.cfg.extra_args)
        .env(
            "RUST_LOG",
            std::env::var("RINGBRIDGE_BRIDGE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(match &self.cfg.log_dir {
            Some(dir) => std::fs::File::create(dir.join(format!("{id}.log")))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
            None => Stdio::null(),
        })
        .kill_on_drop(!self.cfg.detached);
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", self.cfg.binary.display()))?;
        tracing::info!(bridge = %id, pid = child.id(), "bridge process started");
        self.children().insert(
            id.clone(),
            Running {
                child,
                started: Instant::now(),
                registered: false,
                settled: false,
            },
        );
        Ok(id)
    }
}

impl Actuator for ProcessActuator {
    fn name(&self) -> &'static str {
        "process"
    }

    fn booting(&self, registered: &HashSet<String>) -> u32 {
        self.reap(Some(registered))
    }

    fn removable(&self, bridge: &str) -> bool {
        self.children().contains_key(bridge)
            || (self.cfg.detached && self.adoptable(bridge).is_some())
    }

    fn start(&self, n: u32) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.reap(None);
            let now = Instant::now();
            let allowed = self.restarts().allowed(n, now);
            if allowed == 0 {
                anyhow::bail!("{}", self.restarts().status(now));
            }
            for _ in 0..allowed {
                if let Err(e) = self.spawn_one() {
                    self.failed("a bridge", format!("could not start: {e:#}"));
                    return Err(e);
                }
            }
            Ok(())
        })
    }

    fn remove<'a>(&'a self, bridge: &'a str) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let Some(mut r) = self.children().remove(bridge) else {
                // Adopted: a bridge another instance of the shard started (detached).
                let adopted = self.cfg.detached.then(|| self.adoptable(bridge)).flatten();
                let Some(pid) = adopted else {
                    return Ok(false);
                };
                stop_adopted(pid, self.cfg.stop_timeout).await;
                tracing::info!(%bridge, pid = pid.as_raw_nonzero(), "adopted bridge process stopped");
                return Ok(true);
            };
            // SIGTERM: the bridge drains (it is already empty) and exits.
            if let Some(pid) = r
                .child
                .id()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            match tokio::time::timeout(self.cfg.stop_timeout, r.child.wait()).await {
                Ok(status) => tracing::info!(%bridge, ?status, "bridge process stopped"),
                Err(_) => {
                    tracing::warn!(%bridge, "bridge did not exit on SIGTERM: killing it");
                    let _ = r.child.kill().await;
                }
            }
            Ok(true)
        })
    }

    fn status(&self) -> String {
        self.restarts().status(Instant::now())
    }
}

/// The environment variable that marks a detached bridge as the process actuator's, with the
/// instances' URL list as its value: only bridges with the same list are adopted (never a
/// bridge somebody started by hand, nor another shard's).
pub const ADOPTABLE_ENV: &str = "RINGBRIDGE_ADOPTABLE_BY";

/// The process running `binary` as bridge `id` on this machine (from `/proc`), if any and
/// alive: how an instance finds the detached bridges another instance of its shard started.
/// With `marked_for`, only a process whose environment has [`ADOPTABLE_ENV`] set to it.
pub fn local_bridge(
    binary: &std::path::Path,
    id: &str,
    marked_for: Option<&str>,
) -> Option<rustix::process::Pid> {
    let name = binary.file_name()?;
    let marker = marked_for.map(|m| format!("{ADOPTABLE_ENV}={m}\0").into_bytes());
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0);
        let ours = args.next().is_some_and(|a0| {
            std::path::Path::new(std::ffi::OsStr::from_bytes(a0)).file_name() == Some(name)
        });
        if ours
            && args
                .skip_while(|a| *a != b"--bridge-id")
                .nth(1)
                .is_some_and(|a| a == id.as_bytes())
            && alive(pid)
            && marker.as_ref().is_none_or(|m| {
                std::fs::read(e.path().join("environ"))
                    .is_ok_and(|env| env.windows(m.len()).any(|w| w == m.as_slice()))
            })
        {
            return Some(pid);
        }
    }
    None
}

/// Whether `pid` runs (not gone, not a zombie nobody reaped yet).
fn alive(pid: rustix::process::Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()))
        .ok()
        .and_then(|s| {
            // "pid (comm) S ...": the state follows the last ')'.
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Stops an adopted bridge (not our child: no wait): SIGTERM, then SIGKILL after `timeout`.
async fn stop_adopted(pid: rustix::process::Pid, timeout: Duration) {
    use rustix::process::{Signal, kill_process};
    let _ = kill_process(pid, Signal::TERM);
    let until = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= until {
            tracing::warn!(
                pid = pid.as_raw_nonzero(),
                "adopted bridge did not exit on SIGTERM: killing it"
            );
            let _ = kill_process(pid, Signal::KILL);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks that `binary` is a file this process may execute (the `--bridge-binary` flag).
pub fn executable(binary: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = binary.display();
    match std::fs::metadata(binary) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(m) if m.is_file() => Err(format!(
            "--bridge-binary {shown}: not executable (chmod +x it, or point it at ringbridge)"
        )),
        Ok(_) => Err(format!("--bridge-binary {shown}: not a file")),
        Err(_) => Err(format!(
            "--bridge-binary {shown}: no such file (build the workspace, or point it at ringbridge)"
        )),
    }
}

/// "exited (STATUS) N s after starting".
fn exit_reason(up_for: Duration, status: &str) -> String {
    format!(
        "exited ({status}) {:.1} s after starting",
        up_for.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_exits_back_off_exponentially_capped_and_reset_when_a_bridge_stays_up() {
        let (first, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let t0 = Instant::now();
        let mut r = Restarts::default();
        assert_eq!(r.allowed(3, t0), 3);
        assert_eq!(r.status(t0), "");
        let delays: Vec<u64> = (0..9)
            .map(|_| r.failed(t0, "auto-1 exited".into(), first, max).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(r.allowed(3, t0), 0);
        assert_eq!(
            r.status(t0),
            "backing off 60 s after 9 quick exits (last: auto-1 exited)"
        );
        // Past the backoff: one at a time until a bridge stays up.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(r.wait(later), None);
        assert_eq!(r.allowed(3, later), 1);
        assert!(r.status(later).starts_with("starting one bridge at a time"));
        r.stayed_up();
        assert_eq!(r.allowed(3, later), 3);
        assert_eq!(r.status(later), "");
        assert_eq!(r.failed(later, "x".into(), first, max), first);
    }

    #[test]
    fn the_binary_must_be_an_executable_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ringbridge-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bridge");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = executable(&f).unwrap_err();
        assert!(
            e.starts_with("--bridge-binary ") && e.contains("not executable"),
            "{e}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(executable(&f), Ok(()));
        assert!(executable(&dir).unwrap_err().contains("not a file"));
        assert!(
            executable(&dir.join("nope"))
                .unwrap_err()
                .contains("no such file")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_bridge_that_exits_at_once_is_restarted_with_backoff_not_in_a_loop() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ringbridge-backoff-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let logs = dir.join("bridges");
        std::fs::create_dir_all(&logs).unwrap();
        let binary = dir.join("ringbridge");
        std::fs::write(&binary, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let a = ProcessActuator::new(ProcessConfig {
            binary,
            control_url: "http://127.0.0.1:1".into(),
            detached: false,
            region: "eu".into(),
            capacity_pps: 1000.0,
            id_prefix: "auto".into(),
            extra_args: Vec::new(),
            boot_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(1),
            log_dir: Some(logs.clone()),
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(10),
        })
        .unwrap();
        // The autoscaler's loop, much faster than it runs: a bridge is asked for whenever none
        // is booting, for 3 s (at most 300 rounds).
        let none = HashSet::new();
        let since = Instant::now();
        let mut said = String::new();
        for _ in 0..300 {
            if since.elapsed() >= Duration::from_secs(3) {
                break;
            }
            if a.booting(&none) == 0 {
                let _ = a.start(2).await;
            }
            if said.is_empty() {
                said = a.status();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Two at 0 s (nothing had failed yet), then one at a time after 2 s and 4 s of
        // backoff: a few, not one per round.
        let started = std::fs::read_dir(&logs).unwrap().count();
        assert!((2..=4).contains(&started), "{started} bridges started");
        assert!(said.starts_with("backing off "), "{said}");
        assert!(said.contains("quick exit"), "{said}");
        assert!(said.contains("exited (exit status: 1)"), "{said}");
        assert!(a.status().contains("quick exit"), "{}", a.status());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_detached_bridge_of_another_instance_is_found_by_id_and_stopped() {
        // A process that looks like `ringbridge --bridge-id auto-a-7` (argv[0] and arguments).
        let mut child = std::process::Command::new("bash")
            .env(ADOPTABLE_ENV, "http://a,http://b")
            .args([
                "-c",
                "exec -a /opt/other/ringbridge bash -c 'sleep 5; true' x --bridge-id auto-a-7",
            ])
            .spawn()
            .unwrap();
        let bin = std::path::Path::new("/usr/local/bin/ringbridge");
        let mut found = None;
        for _ in 0..100 {
            found = local_bridge(bin, "auto-a-7", Some("http://a,http://b"));
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pid = found.expect("found by its binary's name, --bridge-id and its marker");
        assert_eq!(pid.as_raw_nonzero().get() as u32, child.id());
        assert!(
            local_bridge(bin, "auto-a-70", None).is_none(),
            "ids match whole"
        );
        assert!(local_bridge(std::path::Path::new("/x/other"), "auto-a-7", None).is_none());
        assert!(
            local_bridge(bin, "auto-a-7", Some("http://a")).is_none(),
            "another shard's (or one started by hand) is not adopted"
        );
        assert!(local_bridge(bin, "auto-a-7", None).is_some());
        stop_adopted(pid, Duration::from_secs(5)).await;
        assert!(
            local_bridge(bin, "auto-a-7", None).is_none(),
            "stopped (a zombie is not alive)"
        );
        assert!(!child.wait().unwrap().success());
    }
}
