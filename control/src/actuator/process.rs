//! The process actuator: local `ringbridge` processes, children of this control plane, with a
//! backoff for bridges that exit at once.

use std::collections::{BTreeMap, HashSet};
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
    /// Control plane URL the bridges register with.
    pub control_url: String,
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

    fn spawn_one(&self) -> anyhow::Result<String> {
        let id = {
            let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            format!("{}-{}", self.cfg.id_prefix, *n)
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
            "--exit-with-parent",
        ])
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
        .kill_on_drop(true);
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
                return Ok(false);
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
}
