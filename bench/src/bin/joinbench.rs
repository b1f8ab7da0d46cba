//! `ringbridge-joinbench`: Join latency and joins per second of the control plane with many
//! conferences registered. Starts `ringbridge-control` and `--bridges` ringbridge processes on
//! loopback, fills them with `--conferences` x `--participants` through Join, then measures
//! `--probe` more joins into new conferences at that size. Participants are addresses only
//! (127.x.y.z), no media flows.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use ringbridge_bench::target::binary;
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::focus_client::FocusClient;
use ringbridge_proto::v1::registry_client::RegistryClient;
use tonic::transport::Channel;

/// Join benchmark of the control plane.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Conferences to fill before probing.
    #[arg(long, default_value_t = 10_000)]
    conferences: u32,
    /// Participants per conference.
    #[arg(long, default_value_t = 10)]
    participants: u32,
    /// Bridges to start.
    #[arg(long, default_value_t = 3)]
    bridges: u32,
    /// Joins measured after the fill (into new conferences of `--participants` each).
    #[arg(long, default_value_t = 2_000)]
    probe: u32,
    /// Concurrent clients (each works on its own conferences).
    #[arg(long, default_value_t = 32)]
    concurrency: u32,
}

struct Proc(Child, String);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(name: &str, args: &[String]) -> anyhow::Result<Proc> {
    let mut child = Command::new(binary(name)?)
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    Ok(Proc(child, line))
}

fn field(line: &str, k: &str) -> String {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{k}=")))
        .unwrap_or_default()
        .to_string()
}

/// Joins every participant of conferences `range` (`per` each) with `clients` tasks. Client k
/// takes conferences k, k + clients, ... and joins each one's participants in turn, so the
/// concurrent joins go to different conferences (joins to one conference are serialized by the
/// focus, as they must be). Returns the latency histogram (µs) and the elapsed time.
async fn joins(
    url: &str,
    range: std::ops::Range<u32>,
    per: u32,
    clients: u32,
) -> anyhow::Result<(Histogram<u64>, Duration)> {
    let ch = Channel::from_shared(url.to_string())?.connect().await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let mut focus = FocusClient::new(ch.clone());
        let range = range.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            for conf in range.filter(|c| c % clients == k) {
                for i in 0..per {
                    let n = conf * per + i;
                    let t = Instant::now();
                    let ip = [127, (n >> 16) as u8, (n >> 8) as u8, n as u8];
                    focus
                        .join(pb::JoinRequest {
                            conference: format!("conf-{conf}"),
                            participant_id: format!("p{n}"),
                            region: String::new(),
                            ssrcs: vec![n + 1],
                            remote_addr: format!("{}.{}.{}.{}:5000", ip[0], ip[1], ip[2], ip[3]),
                            srtp: None,
                            role: String::new(),
                            last_n: 0,
                        })
                        .await?;
                    h.record(t.elapsed().as_micros() as u64)?;
                }
            }
            anyhow::Ok(h)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    Ok((all, started.elapsed()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let dir = std::env::temp_dir().join(format!("ringbridge-joinbench-{}", std::process::id()));
    let ctl = start(
        "ringbridge-control",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "off",
            "--data-dir",
        ]
        .map(String::from)
        .into_iter()
        .chain([dir.display().to_string()])
        .collect::<Vec<_>>(),
    )?;
    let url = format!("http://{}", field(&ctl.1, "listen"));
    let mut bridges = Vec::new();
    for i in 0..cli.bridges {
        let args: Vec<String> = [
            "--engine",
            "mio",
            "--workers",
            "1",
            "--no-pin",
            "--media",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--control",
            &url,
            "--bridge-id",
            &format!("b{i}"),
            "--capacity-pps",
            "1e12",
        ]
        .map(String::from)
        .to_vec();
        bridges.push(start("ringbridge", &args)?);
    }
    let mut reg = RegistryClient::new(Channel::from_shared(url.clone())?.connect().await?);
    while reg
        .list_bridges(pb::ListBridgesRequest {})
        .await?
        .into_inner()
        .bridges
        .len()
        < cli.bridges as usize
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fill = cli.conferences * cli.participants;
    eprintln!(
        "filling {} conferences x {} participants on {} bridges ...",
        cli.conferences, cli.participants, cli.bridges
    );
    let (hf, tf) = joins(&url, 0..cli.conferences, cli.participants, cli.concurrency).await?;
    let probe_confs = cli.probe.div_ceil(cli.participants);
    let (hp, tp) = joins(
        &url,
        cli.conferences..cli.conferences + probe_confs,
        cli.participants,
        cli.concurrency,
    )
    .await?;
    let show = |name: &str, h: &Histogram<u64>, t: Duration| {
        println!(
            "{name:<40} joins {:>7}  {:>7.0} joins/s  p50 {:>6} µs  p99 {:>6} µs  max {:>7} µs",
            h.len(),
            h.len() as f64 / t.as_secs_f64(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        )
    };
    show("fill (0 -> full)", &hf, tf);
    show(&format!("probe at {} participants", fill), &hp, tp);
    drop(bridges);
    drop(ctl);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
