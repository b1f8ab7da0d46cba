//! `ringbridge-control serve`: its flags (checked before anything binds, naming the flag) and
//! the process: the store, the cluster and its elector, the monitor, the flusher, the
//! autoscaler with its actuator, metrics, the gRPC server with health and reflection, and the
//! HTTP server of WHIP, WHEP and the page ([`crate::signal::http`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ringbridge_edge::ready::Ready;
use ringbridge_proto::v1::autoscaler_server::AutoscalerServer;
use ringbridge_proto::v1::focus_server::FocusServer;
use ringbridge_proto::v1::registry_server::RegistryServer;
use ringbridge_proto::v1::router_server::RouterServer;

use crate::actuator::kubernetes::{KubernetesActuator, KubernetesConfig};
use crate::actuator::{Actuator, ProcessActuator, ProcessConfig};
use crate::core::autoscaler::HpaConfig;
use crate::core::focus::MAX_ID_LEN;
use crate::run::api::{
    AutoscalerService, FocusService, MAX_CAPACITY_PPS, RegistryService, RouterService,
};
use crate::run::service::{Config, Control};
use crate::store::cluster::Cluster;
use crate::store::etcd::{self, EtcdStore};
use crate::store::{FileStore, Store};

/// Largest request the control plane decodes: every limited field at its limit fits easily.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;

/// Longest time a flag may give, ms (30 days): a drain grace or a window longer than that is a
/// typo, and the time arithmetic stays far from overflowing.
pub const MAX_MS: u64 = 30 * 24 * 3600 * 1000;

/// The flags of `serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// gRPC address (Focus, Router, Registry, health, reflection).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// Directory of the embedded store (routes and placements survive restarts), and of the
    /// process actuator's bridge logs.
    #[arg(long, default_value = "ringbridge-control-data")]
    pub data_dir: PathBuf,
    /// Where routes and placements live: `file` (the embedded store in --data-dir) or
    /// `etcd://HOST:PORT[,HOST:PORT...]`.
    #[arg(long, default_value = "file")]
    pub store: String,
    /// Deadline of each etcd call, ms.
    #[arg(long, default_value_t = 2000)]
    pub etcd_timeout_ms: u64,
    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// WHIP and WHEP (WebRTC publishers and viewers) and the page, over HTTP on this address;
    /// `off` serves none.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// This shard's id in the router.
    #[arg(long, default_value = "shard-0")]
    pub shard_id: String,
    /// Interval bridges report load at, ms.
    #[arg(long, default_value_t = 2000)]
    pub report_interval_ms: u64,
    /// Reports a bridge may miss before it is declared down.
    #[arg(long, default_value_t = 3)]
    pub missed_reports: u64,
    /// Idle seconds after which a conference's route is forgotten.
    #[arg(long, default_value_t = 3600)]
    pub route_ttl_secs: u64,
    /// Packets/s of one stream, for the stress correction of placements between reports: a
    /// participant joining k others of its conference on a bridge adds 2k + 1 streams.
    #[arg(long, default_value_t = 100.0)]
    pub participant_pps: f64,
    /// Deadline of every call to a bridge's API, ms. A call that misses it makes the bridge
    /// suspect (no new conferences) and fails the operation with UNAVAILABLE.
    #[arg(long, default_value_t = 2000)]
    pub bridge_timeout_ms: u64,
    /// Interval between gRPC health probes of each bridge, ms.
    #[arg(long, default_value_t = 250)]
    pub probe_interval_ms: u64,
    /// Deadline of a health probe, ms.
    #[arg(long, default_value_t = 500)]
    pub probe_timeout_ms: u64,
    /// Failed health probes in a row after which a bridge is down and its conferences move.
    #[arg(long, default_value_t = 2)]
    pub probe_failures: u32,
    /// Interval at which placement changes are appended to the store, ms; a crash (not a
    /// shutdown) loses at most this much.
    #[arg(long, default_value_t = 250)]
    pub flush_interval_ms: u64,
    /// Participants of one conference a bridge takes before the conference grows onto another
    /// bridge of the region (Octo).
    #[arg(long, default_value_t = 80)]
    pub max_per_bridge: usize,
    /// Edges one bridge feeds per broadcast (the origin, and an edge for the next tier): the
    /// next edge pulls from an edge with room, so the origin's fan-out stays bounded.
    #[arg(long, default_value_t = 8)]
    pub stream_fanout: usize,
    /// Viewers of one broadcast an edge takes before the next viewer of its region goes to
    /// another edge (which then pulls too); when every edge is full or over the stress
    /// threshold, the least loaded edge takes it anyway.
    #[arg(long, default_value_t = 1000)]
    pub max_viewers_per_edge: usize,
    /// Stress at which a bridge counts as full for new participants.
    #[arg(long, default_value_t = 0.8)]
    pub stress_threshold: f64,
    /// How long a draining bridge keeps its participants before they are moved, ms.
    #[arg(long, default_value_t = 300_000)]
    pub drain_grace_ms: u64,
    /// After a drain moved a conference's participants, the drained bridge keeps its old copy
    /// this long, ms: clients that have not switched to the new bridge yet still send and
    /// receive there (make before break, end to end), then it is deleted. 0: at once.
    #[arg(long, default_value_t = 2_000)]
    pub drain_linger_ms: u64,
    /// Size the bridge fleet on measured traffic: off, process (local ringbridge processes)
    /// or kubernetes (the replicas of a bridge StatefulSet).
    #[arg(long, default_value = "off")]
    pub autoscale: Autoscale,
    /// Interval between autoscaler evaluations, ms (the HPA's sync period).
    #[arg(long, default_value_t = 15_000)]
    pub autoscale_interval_ms: u64,
    /// Open WatchConference streams one client (IP address) may hold; more are refused with
    /// RESOURCE_EXHAUSTED. A stream is freed as soon as its client goes away.
    #[arg(long, default_value_t = 1000)]
    pub max_watches_per_client: usize,
    /// The autoscaler's settings.
    #[command(flatten)]
    pub hpa: HpaArgs,
    /// process actuator: the ringbridge binary (default: next to this one).
    #[arg(long)]
    pub bridge_binary: Option<PathBuf>,
    /// process actuator: region of the bridges it starts.
    #[arg(long, default_value = "default")]
    pub bridge_region: String,
    /// process actuator: packets/s (in + out) at which its bridges report stress 1.
    #[arg(long, default_value_t = 200_000.0)]
    pub bridge_capacity_pps: f64,
    /// process actuator: ids of its bridges are this prefix, a dash and a counter.
    #[arg(long, default_value = "auto")]
    pub bridge_id_prefix: String,
    /// process actuator: the control instances its bridges register and report with,
    /// comma-separated (default: this instance). Naming others (every instance of the shard,
    /// with the etcd store) makes its bridges outlive this instance: they are started without
    /// --exit-with-parent, go on forwarding when it is killed or stopped, and report to the
    /// instance that takes over, whose process actuator adopts them (drains and stops them
    /// like its own).
    #[arg(long)]
    pub bridge_control: Option<String>,
    /// process actuator: one more argument for each bridge (repeat it), e.g.
    /// --bridge-arg=--engine --bridge-arg=mio.
    #[arg(long, allow_hyphen_values = true)]
    pub bridge_arg: Vec<String>,
    /// kubernetes actuator: namespace of the bridge StatefulSet.
    #[arg(long, default_value = "default")]
    k8s_namespace: String,
    /// kubernetes actuator: name of the bridge StatefulSet (pods are NAME-0, NAME-1, ...; each
    /// registers with its pod name as bridge id).
    #[arg(long, default_value = "ringbridge")]
    k8s_statefulset: String,
    /// kubernetes actuator: API server URL (default: in-cluster service account, else the
    /// kubeconfig).
    #[arg(long)]
    k8s_api: Option<String>,
}

impl ServeArgs {
    /// Refuses, naming the flag, settings that would leave the service useless (every join
    /// failing, every bridge refused, NaN in the placement arithmetic, keys of another shard):
    /// checked before anything binds.
    fn check(&self) -> Result<(), String> {
        positive("--participant-pps", self.participant_pps)?;
        positive("--stress-threshold", self.stress_threshold)?;
        let cap = self.bridge_capacity_pps;
        if !(cap.is_finite() && (1.0..=MAX_CAPACITY_PPS).contains(&cap)) {
            return Err(format!(
                "--bridge-capacity-pps: must be a number of packets/s from 1 to \
                 {MAX_CAPACITY_PPS:e} (what the registry accepts), got {cap}"
            ));
        }
        for (flag, v) in [
            ("--etcd-timeout-ms", self.etcd_timeout_ms),
            ("--report-interval-ms", self.report_interval_ms),
            ("--bridge-timeout-ms", self.bridge_timeout_ms),
            ("--probe-interval-ms", self.probe_interval_ms),
            ("--probe-timeout-ms", self.probe_timeout_ms),
            ("--flush-interval-ms", self.flush_interval_ms),
            ("--drain-grace-ms", self.drain_grace_ms),
            ("--drain-linger-ms", self.drain_linger_ms),
            ("--autoscale-interval-ms", self.autoscale_interval_ms),
            ("--scale-up-window-ms", self.hpa.scale_up_window_ms),
            ("--scale-down-window-ms", self.hpa.scale_down_window_ms),
            ("--scale-up-period-ms", self.hpa.scale_up_period_ms),
            ("--scale-down-period-ms", self.hpa.scale_down_period_ms),
            ("--route-ttl-secs", self.route_ttl_secs.saturating_mul(1000)),
            (
                "--report-interval-ms times --missed-reports",
                self.report_interval_ms.saturating_mul(self.missed_reports),
            ),
        ] {
            if v > MAX_MS {
                return Err(format!("{flag}: longer than 30 days ({MAX_MS} ms)"));
            }
        }
        if self.autoscale_interval_ms == 0 {
            return Err("--autoscale-interval-ms: must be > 0".into());
        }
        shard_id(&self.shard_id)?;
        self.http_addr()?;
        if self.store != "file" {
            etcd::endpoints(&self.store)?;
        }
        if self.autoscale == Autoscale::Process {
            crate::actuator::executable(&self.bridge_binary()?)?;
        }
        Ok(())
    }

    /// The `--http` address, `None` for `off`.
    fn http_addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.http == "off" {
            return Ok(None);
        }
        self.http.parse().map(Some).map_err(|_| {
            format!(
                "--http {:?}: must be ip:port or off",
                self.http.chars().take(64).collect::<String>()
            )
        })
    }

    /// The process actuator's bridge binary: `--bridge-binary`, else `ringbridge` next to this
    /// one.
    fn bridge_binary(&self) -> Result<PathBuf, String> {
        match &self.bridge_binary {
            Some(b) => Ok(b.clone()),
            None => std::env::current_exe()
                .map(|e| e.with_file_name("ringbridge"))
                .map_err(|e| format!("--bridge-binary: not given, and no path of our own: {e}")),
        }
    }
}

/// A finite number > 0, or an error naming `flag`.
pub fn positive(flag: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("{flag}: must be a finite number > 0, got {v}"))
    }
}

/// A shard id is part of etcd keys (`/ringbridge/shards/ID/...`) and of the router's answers:
/// letters, digits, `.`, `_` and `-` only, so no `/` can make it another shard's prefix.
pub fn shard_id(id: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(ok) {
        return Err(format!(
            "--shard-id {:?}: must be 1 to {MAX_ID_LEN} letters, digits, '.', '_' or '-' \
             (it is part of etcd keys)",
            id.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

/// Which actuator the autoscaler drives.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autoscale {
    /// No autoscaler.
    Off,
    /// Local ringbridge processes.
    Process,
    /// A Kubernetes StatefulSet's scale subresource.
    Kubernetes,
}

/// The autoscaler's settings (Kubernetes HPA semantics), shared by `serve` and `simulate`.
#[derive(clap::Args, Debug, Clone)]
pub struct HpaArgs {
    /// Target utilization of the serving bridges: (packets in + out) / capacity.
    #[arg(long, default_value_t = 0.6)]
    pub target_utilization: f64,
    /// No change while utilization / target is within 1 +- this.
    #[arg(long, default_value_t = 0.1)]
    pub tolerance: f64,
    /// Fewest bridges.
    #[arg(long, default_value_t = 1)]
    pub min_bridges: u32,
    /// Most bridges.
    #[arg(long, default_value_t = 100)]
    pub max_bridges: u32,
    /// Scale-up stabilization window, ms (the lowest recommendation in it wins).
    #[arg(long, default_value_t = 0)]
    pub scale_up_window_ms: u64,
    /// Scale-down stabilization window, ms (the highest recommendation in it wins).
    #[arg(long, default_value_t = 300_000)]
    pub scale_down_window_ms: u64,
    /// Scale-up policy: at most this percentage more bridges per period...
    #[arg(long, default_value_t = 100)]
    pub scale_up_percent: u32,
    /// ...or this many more, whichever allows more.
    #[arg(long, default_value_t = 4)]
    pub scale_up_bridges: u32,
    /// Scale-up policy period, ms.
    #[arg(long, default_value_t = 15_000)]
    pub scale_up_period_ms: u64,
    /// Scale-down policy: at most this many fewer bridges per period.
    #[arg(long, default_value_t = 1)]
    pub scale_down_bridges: u32,
    /// Scale-down policy period, ms.
    #[arg(long, default_value_t = 60_000)]
    pub scale_down_period_ms: u64,
}

impl HpaArgs {
    /// The settings, validated.
    pub fn config(&self) -> anyhow::Result<HpaConfig> {
        let c = HpaConfig {
            target: self.target_utilization,
            tolerance: self.tolerance,
            min: self.min_bridges,
            max: self.max_bridges,
            up_window_ms: self.scale_up_window_ms,
            down_window_ms: self.scale_down_window_ms,
            up_percent: self.scale_up_percent,
            up_bridges: self.scale_up_bridges,
            up_period_ms: self.scale_up_period_ms,
            down_bridges: self.scale_down_bridges,
            down_period_ms: self.scale_down_period_ms,
        };
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}

/// Runs the control plane with `a` until SIGTERM or SIGINT (state saved on the way out).
pub async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    // Bad settings stop here, naming the flag, before anything binds.
    let hpa = a.hpa.config()?;
    a.check().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding --listen {}", a.listen))?;
    let listen = listener.local_addr()?;
    let mut etcd_endpoints = None;
    let store: Arc<dyn Store> = if a.store == "file" {
        Arc::new(FileStore::new(&a.data_dir).with_context(|| {
            format!(
                "--data-dir {} must be a writable directory",
                a.data_dir.display()
            )
        })?)
    } else {
        let eps = etcd::endpoints(&a.store).map_err(anyhow::Error::msg)?;
        etcd_endpoints = Some(eps.clone());
        let timeout = Duration::from_millis(a.etcd_timeout_ms.max(1));
        let s = tokio::task::spawn_blocking({
            let shard = a.shard_id.clone();
            move || EtcdStore::connect(&eps, &shard, timeout, true)
        })
        .await?
        .with_context(|| format!("--store {}", a.store))?;
        Arc::new(s)
    };
    let (health, router) = ringbridge_edge::grpc::router()?;
    let control = Control::new(
        Config {
            shard_id: a.shard_id.clone(),
            shard_addr: listen.to_string(),
            report_interval_ms: a.report_interval_ms.max(10),
            missed_reports: a.missed_reports.max(1),
            route_ttl_ms: a.route_ttl_secs * 1000,
            per_participant_pps: a.participant_pps,
            bridge_timeout_ms: a.bridge_timeout_ms.max(1),
            probe_interval_ms: a.probe_interval_ms.max(10),
            probe_timeout_ms: a.probe_timeout_ms.max(1),
            probe_failures: a.probe_failures.max(1),
            flush_interval_ms: a.flush_interval_ms.max(1),
            max_per_bridge: a.max_per_bridge.max(1),
            stream_fanout: a.stream_fanout.max(1),
            max_viewers_per_edge: a.max_viewers_per_edge.max(1),
            stress_threshold: a.stress_threshold,
            drain_grace_ms: a.drain_grace_ms,
            drain_linger_ms: a.drain_linger_ms,
            autoscale: (a.autoscale != Autoscale::Off).then_some(hpa),
            autoscale_interval_ms: a.autoscale_interval_ms.max(10),
            max_watches_per_client: a.max_watches_per_client.max(1),
        },
        store,
        health.clone(),
    )
    .with_context(|| match a.store.as_str() {
        "file" => format!("loading state from --data-dir {}", a.data_dir.display()),
        other => format!("loading state from --store {other}"),
    })?;
    if let Some(eps) = &etcd_endpoints {
        // Several instances on etcd: register under a lease, stand by until elected.
        let cluster = Arc::new(
            Cluster::join(
                eps,
                &a.shard_id,
                &listen.to_string(),
                Duration::from_millis(a.etcd_timeout_ms.max(1)),
                a.route_ttl_secs * 1000,
            )
            .await
            .with_context(|| format!("--store {}", a.store))?,
        );
        control.set_cluster(cluster.clone());
        tokio::spawn(control.clone().publish_events());
        tokio::spawn(cluster.clone().keep_alive());
        tokio::spawn(control.clone().elect());
    }
    let monitor = tokio::spawn(control.clone().monitor());
    let actuator: Option<Arc<dyn Actuator>> = match a.autoscale {
        Autoscale::Off => None,
        Autoscale::Process => Some(Arc::new(ProcessActuator::new(ProcessConfig {
            binary: a.bridge_binary().map_err(anyhow::Error::msg)?,
            control_url: a
                .bridge_control
                .clone()
                .unwrap_or_else(|| format!("http://{listen}")),
            detached: a
                .bridge_control
                .as_deref()
                .is_some_and(|l| l.split(',').any(|u| u.trim() != format!("http://{listen}"))),
            region: a.bridge_region.clone(),
            capacity_pps: a.bridge_capacity_pps,
            id_prefix: a.bridge_id_prefix.clone(),
            extra_args: a.bridge_arg.clone(),
            boot_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
            log_dir: {
                let d = a.data_dir.join("bridges");
                std::fs::create_dir_all(&d).ok().map(|_| d)
            },
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(10),
        })?)),
        Autoscale::Kubernetes => Some(Arc::new(
            KubernetesActuator::connect(KubernetesConfig {
                namespace: a.k8s_namespace.clone(),
                statefulset: a.k8s_statefulset.clone(),
                api_url: a.k8s_api.clone(),
                timeout: Duration::from_secs(10),
            })
            .await?,
        )),
    };
    let autoscaler = actuator.map(|act| tokio::spawn(control.clone().autoscale(act)));
    let flusher = tokio::spawn(control.clone().flusher());
    let mut metrics_addr = None;
    if let Some(m) = a.metrics {
        let l = tokio::net::TcpListener::bind(m)
            .await
            .with_context(|| format!("binding --metrics {m}"))?;
        metrics_addr = Some(l.local_addr()?);
        let c = control.clone();
        tokio::spawn(ringbridge_edge::metrics::serve(
            l,
            Arc::new(move |r| crate::run::metrics::render(&c, r)),
        ));
    }
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut http_addr = None;
    let mut http_server = None;
    if let Some(h) = a.http_addr().map_err(anyhow::Error::msg)? {
        let l = tokio::net::TcpListener::bind(h)
            .await
            .with_context(|| format!("binding --http {h}"))?;
        http_addr = Some(l.local_addr()?);
        http_server = Some(tokio::spawn(crate::signal::http::serve(
            l,
            control.clone(),
            async {
                let _ = http_stopped.await;
            },
        )));
    }
    health.set_serving::<FocusServer<FocusService>>().await;
    health.set_serving::<RouterServer<RouterService>>().await;
    health
        .set_serving::<RegistryServer<RegistryService>>()
        .await;
    health
        .set_serving::<AutoscalerServer<AutoscalerService>>()
        .await;
    println!(
        "{}",
        Ready::new("ringbridge-control")
            .field("listen", listen)
            .field("shard", &a.shard_id)
            .field("data_dir", a.data_dir.display())
            .field("autoscale", format!("{:?}", a.autoscale).to_lowercase())
            .field_opt("metrics", metrics_addr)
            .field_opt("http", http_addr)
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ringbridge_edge::grpc::serve(
        router
            .add_service(
                FocusServer::new(FocusService(control.clone()))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                RouterServer::new(RouterService(control.clone()))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                RegistryServer::new(RegistryService(control.clone()))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                AutoscalerServer::new(AutoscalerService(control.clone()))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            ),
        listener,
        async {
            let _ = stop_rx.await;
        },
    ));
    ringbridge_edge::shutdown::signal().await;
    // No failover decisions while stopping.
    monitor.abort();
    flusher.abort();
    if let Some(a) = autoscaler {
        a.abort();
    }
    let saved = control.flush().await;
    let _ = stop_tx.send(());
    let _ = http_stop.send(());
    if let Some(h) = http_server {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), h).await;
    }
    // Long-lived watch streams would hold a graceful stop open: give calls a moment, then go.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), server).await;
    match saved {
        Ok(()) => {
            tracing::info!("state saved; stopped");
            Ok(())
        }
        Err(e) => anyhow::bail!("stopping with unsaved state: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        serve: ServeArgs,
    }

    /// `serve` with `args`, parsed as the command line is, then checked.
    fn serve_check(args: &[&str]) -> Result<(), String> {
        use clap::Parser;
        let a = Cmd::try_parse_from(["serve"].iter().chain(args))
            .map_err(|e| e.to_string())?
            .serve;
        a.hpa.config().map_err(|e| e.to_string())?;
        a.check()
    }

    #[test]
    fn serve_flags_that_would_make_the_service_useless_are_refused_naming_the_flag() {
        assert_eq!(serve_check(&[]), Ok(()));
        assert_eq!(
            serve_check(&["--shard-id", "eu-west.1_a", "--store", "etcd://a:1,b:2"]),
            Ok(())
        );
        let dir = std::env::temp_dir().join(format!("ringbridge-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("ringbridge");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let plain = plain.to_str().unwrap();
        let u64_max = u64::MAX.to_string();
        for (args, flag) in [
            (
                &["--bridge-capacity-pps", "inf"][..],
                "--bridge-capacity-pps",
            ),
            (&["--bridge-capacity-pps", "NaN"], "--bridge-capacity-pps"),
            (&["--bridge-capacity-pps", "0.5"], "--bridge-capacity-pps"),
            (&["--participant-pps", "NaN"], "--participant-pps"),
            (&["--participant-pps=-100"], "--participant-pps"),
            (&["--participant-pps", "inf"], "--participant-pps"),
            (&["--participant-pps", "0"], "--participant-pps"),
            (&["--stress-threshold", "NaN"], "--stress-threshold"),
            (&["--stress-threshold", "0"], "--stress-threshold"),
            (&["--stress-threshold=-1"], "--stress-threshold"),
            (&["--stress-threshold", "inf"], "--stress-threshold"),
            (&["--target-utilization", "NaN"], "--target-utilization"),
            (&["--target-utilization", "inf"], "--target-utilization"),
            (&["--tolerance", "NaN"], "--tolerance"),
            (&["--tolerance=-0.1"], "--tolerance"),
            (
                &["--scale-up-percent", "0", "--scale-up-bridges", "0"],
                "--scale-up-percent",
            ),
            (&["--drain-grace-ms", &u64_max], "--drain-grace-ms"),
            (
                &["--scale-down-window-ms", &u64_max],
                "--scale-down-window-ms",
            ),
            (&["--route-ttl-secs", &u64_max], "--route-ttl-secs"),
            (
                &[
                    "--report-interval-ms",
                    "1000000000",
                    "--missed-reports",
                    "1000",
                ],
                "--missed-reports",
            ),
            (&["--autoscale-interval-ms", "0"], "--autoscale-interval-ms"),
            (&["--shard-id", "a/b"], "--shard-id"),
            (&["--shard-id", ""], "--shard-id"),
            (&["--shard-id", "a b"], "--shard-id"),
            (&["--shard-id", "a\n"], "--shard-id"),
            (&["--http", "8080"], "--http"),
            (&["--http", "localhost:8080"], "--http"),
            (&["--store", "etcd://127.0.0.1:2379/tenant-a"], "--store"),
            (
                &["--autoscale", "process", "--bridge-binary", plain],
                "--bridge-binary",
            ),
            (
                &[
                    "--autoscale",
                    "process",
                    "--bridge-binary",
                    "/nonexistent/rb",
                ],
                "--bridge-binary",
            ),
        ] {
            let e = serve_check(args).expect_err(&format!("{args:?} accepted"));
            assert!(e.contains(flag), "{args:?}: {e}");
        }
        // Not executable, but not used either: only the process actuator needs it.
        assert_eq!(serve_check(&["--bridge-binary", plain]), Ok(()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
