//! What the rig's traffic flows through: a ringbridge it programs over gRPC (running elsewhere,
//! or started here with either engine), or a baseline forwarder started here with the same
//! conference setup.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;

use anyhow::{Context, bail};
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;
use tonic::transport::Channel;

use crate::groups::Groups;

/// A forwarder the rig can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// ringbridge, io_uring engine.
    Uring,
    /// ringbridge, epoll engine.
    Mio,
    /// `floor-forwarder`: recvmmsg/sendmmsg, no table logic.
    Floor,
    /// `naive-forwarder`: recv_from, then send_to per destination.
    Naive,
    /// ringbridge, AF_XDP engine (`--xdp-iface` among the extra arguments).
    Xdp,
}

impl Kind {
    /// All kinds, in report order.
    pub const ALL: [Kind; 5] = [Kind::Uring, Kind::Mio, Kind::Floor, Kind::Naive, Kind::Xdp];

    /// Short name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Uring => "uring",
            Kind::Mio => "mio",
            Kind::Floor => "floor",
            Kind::Naive => "naive",
            Kind::Xdp => "xdp",
        }
    }

    /// Name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Uring => "ringbridge uring",
            Kind::Mio => "ringbridge mio",
            Kind::Floor => "floor-forwarder",
            Kind::Naive => "naive-forwarder",
            Kind::Xdp => "ringbridge xdp",
        }
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("expected uring, mio, floor, naive or xdp, not {s:?}"))
    }
}

/// One participant as the target must know it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Endpoint id.
    pub name: String,
    /// The participant's socket address.
    pub addr: SocketAddr,
    /// SSRCs it sends.
    pub ssrcs: Vec<u32>,
    /// SRTP parameters, when the rig runs with `--srtp`.
    pub srtp: Option<pb::SrtpParams>,
    /// With `--subscribe`: the endpoint ids of the senders it subscribes to (programmed with
    /// `SetSubscription` once the whole conference is added); `None`: everyone (the default).
    pub subscribe: Option<Vec<String>>,
    /// Its part in a simulcast group, if any.
    pub simulcast: Option<Simulcast>,
}

/// A member's part in its conference's simulcast group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Simulcast {
    /// Publishes these SSRCs as the group's layers, lowest first.
    Publish(Vec<u32>),
    /// Receives publisher `publisher`'s group as one stream on SSRC `ssrc`.
    Receive {
        /// The publisher's endpoint id.
        publisher: String,
        /// The SSRC the bridge sends it the group on.
        ssrc: u32,
    },
}

/// A programmed forwarder.
pub struct Target {
    /// What it is, for reports.
    pub label: String,
    /// Where participants send.
    pub media: SocketAddr,
    /// Process to measure CPU of, when on this machine.
    pub pid: Option<u32>,
    /// A second bridge relayed with this one (Octo runs); its CPU counts too.
    peer: Option<Box<Target>>,
    child: Option<Child>,
    client: Option<BridgeClient<Channel>>,
    conferences: Vec<String>,
    setup: Option<PathBuf>,
}

/// Creates conference `id` on the bridge of `client` with `members`; returns the bridge's media
/// address (from its last AddEndpoint answer).
async fn program(
    client: &mut BridgeClient<Channel>,
    id: &str,
    members: &[Member],
) -> anyhow::Result<Option<SocketAddr>> {
    client
        .create_conference(pb::CreateConferenceRequest {
            conference_id: id.into(),
        })
        .await
        .with_context(|| format!("CreateConference {id}"))?;
    let mut media = None;
    for m in members {
        let (simulcast, simulcast_receive) = match &m.simulcast {
            None => (None, None),
            Some(Simulcast::Publish(layers)) => (
                Some(pb::SimulcastSend {
                    layers: layers.clone(),
                    ..Default::default()
                }),
                None,
            ),
            Some(Simulcast::Receive { publisher, ssrc }) => (
                None,
                Some(pb::SimulcastReceive {
                    publisher: publisher.clone(),
                    ssrc: *ssrc,
                    max_height: 0,
                }),
            ),
        };
        let r = client
            .add_endpoint(pb::AddEndpointRequest {
                conference_id: id.into(),
                endpoint_id: m.name.clone(),
                ssrcs: m.ssrcs.clone(),
                remote_addr: m.addr.to_string(),
                srtp: m.srtp.clone(),
                simulcast,
                simulcast_receive,
                ..Default::default()
            })
            .await
            .with_context(|| format!("AddEndpoint {id}/{}", m.name))?;
        media = Some(r.into_inner().media_addr.parse()?);
    }
    Ok(media)
}

/// Finds a binary of this workspace: `$RINGBRIDGE_BIN_DIR`, next to this executable, or one
/// directory up (tests run from `target/*/deps`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("RINGBRIDGE_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    let exe = std::env::current_exe()?;
    if let Some(d) = exe.parent() {
        dirs.push(d.to_path_buf());
        if let Some(up) = d.parent() {
            dirs.push(up.to_path_buf());
        }
    }
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found in {dirs:?} (build the workspace first)"))
}

/// Starts `cmd`, waits for its ready line and returns it with the child.
fn start(mut cmd: Command) -> anyhow::Result<(Child, String)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .env("RUST_LOG", "warn")
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .context("reading the ready line")?;
    if line.is_empty() {
        let _ = child.kill();
        bail!("{cmd:?} exited before it was ready");
    }
    Ok((child, line))
}

fn field(line: &str, key: &str) -> anyhow::Result<String> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .map(str::to_string)
        .with_context(|| format!("no {key}= in {line:?}"))
}

impl Target {
    /// Starts `kind` on loopback (`workers` worker threads for ringbridge, pinned to cores when
    /// `pin`) and programs `conferences` into it.
    pub async fn spawn(
        kind: Kind,
        conferences: &[Vec<Member>],
        workers: usize,
        pin: bool,
    ) -> anyhow::Result<Self> {
        Self::spawn_with(kind, conferences, workers, pin, &[]).await
    }

    /// [`Target::spawn`] with extra command-line arguments for a ringbridge target (A/B runs of
    /// an engine option).
    pub async fn spawn_with(
        kind: Kind,
        conferences: &[Vec<Member>],
        workers: usize,
        pin: bool,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn_on(kind, conferences, workers, pin, extra, None).await
    }

    /// [`Target::spawn_with`] with the media socket on `media_ip` (default: the first
    /// participant's address, i.e. the same host side of the network).
    pub async fn spawn_on(
        kind: Kind,
        conferences: &[Vec<Member>],
        workers: usize,
        pin: bool,
        extra: &[&str],
        media_ip: Option<std::net::IpAddr>,
    ) -> anyhow::Result<Self> {
        let ip = media_ip.unwrap_or_else(|| {
            conferences
                .first()
                .and_then(|c| c.first())
                .map_or("127.0.0.1".parse().unwrap(), |m| m.addr.ip())
        });
        let media = SocketAddr::new(ip, 0).to_string();
        match kind {
            Kind::Uring | Kind::Mio | Kind::Xdp => {
                let mut cmd = Command::new(binary("ringbridge")?);
                cmd.args(["--engine", kind.name(), "--api", "127.0.0.1:0", "--media"])
                    .arg(&media)
                    .args(["--workers", &workers.to_string()]);
                if !pin {
                    cmd.arg("--no-pin");
                }
                cmd.args(extra);
                let (child, line) = start(cmd)?;
                let api = field(&line, "api")?;
                let pid = child.id();
                let mut t = Self::remote(&api, conferences, Some(pid)).await?;
                t.label = kind.label().into();
                t.child = Some(child);
                Ok(t)
            }
            Kind::Floor | Kind::Naive => {
                if conferences.iter().flatten().any(|m| m.srtp.is_some()) {
                    bail!("{} has no SRTP: use --srtp with uring or mio", kind.label());
                }
                if conferences.iter().flatten().any(|m| m.subscribe.is_some()) {
                    bail!(
                        "{} has no subscriptions: use --subscribe with uring or mio",
                        kind.label()
                    );
                }
                let groups = Groups {
                    groups: conferences
                        .iter()
                        .map(|c| c.iter().map(|m| m.addr).collect())
                        .collect(),
                };
                let path = std::env::temp_dir().join(format!(
                    "ringbridge-groups-{}-{}.json",
                    std::process::id(),
                    kind.name()
                ));
                std::fs::write(&path, serde_json::to_vec(&groups)?)?;
                let name = format!("{}-forwarder", kind.name());
                let mut cmd = Command::new(binary(&name)?);
                cmd.arg("--listen").arg(&media).arg("--setup").arg(&path);
                let (child, line) = start(cmd)?;
                Ok(Self {
                    label: kind.label().into(),
                    media: field(&line, "media")?.parse()?,
                    pid: Some(child.id()),
                    peer: None,
                    child: Some(child),
                    client: None,
                    conferences: Vec::new(),
                    setup: Some(path),
                })
            }
        }
    }

    /// Programs `conferences` into the bridge whose API is at `api` ("host:port"): each
    /// conference, its endpoints, then the subscriptions of those that have one.
    pub async fn remote(
        api: &str,
        conferences: &[Vec<Member>],
        pid: Option<u32>,
    ) -> anyhow::Result<Self> {
        let mut client = BridgeClient::connect(format!("http://{api}"))
            .await
            .with_context(|| format!("connecting to the bridge API at {api}"))?;
        let mut ids = Vec::new();
        let mut media = None;
        for (i, members) in conferences.iter().enumerate() {
            let id = format!("loadgen-{}-{i}", std::process::id());
            media = program(&mut client, &id, members).await?.or(media);
            ids.push(id);
        }
        let mut t = Self {
            label: format!("ringbridge at {api}"),
            media: media.context("no participants to program")?,
            pid,
            peer: None,
            child: None,
            client: Some(client),
            conferences: ids,
            setup: None,
        };
        if conferences.iter().flatten().any(|m| m.subscribe.is_some()) {
            t.set_subscriptions(conferences).await?;
        }
        Ok(t)
    }

    /// Deletes every conference and programs it again as `conferences` says (the same members in
    /// the same order; their simulcast parts may differ, which only AddEndpoint sets).
    pub async fn reprogram(&mut self, conferences: &[Vec<Member>]) -> anyhow::Result<()> {
        let client = self
            .client
            .as_mut()
            .context("reprogramming needs a ringbridge target")?;
        for (id, members) in self.conferences.iter().zip(conferences) {
            client
                .delete_conference(pb::DeleteConferenceRequest {
                    conference_id: id.clone(),
                })
                .await
                .with_context(|| format!("DeleteConference {id}"))?;
            program(client, id, members).await?;
        }
        if conferences.iter().flatten().any(|m| m.subscribe.is_some()) {
            self.set_subscriptions(conferences).await?;
        }
        Ok(())
    }

    /// Programs every member's subscription (`SetSubscription`): the senders it names, or
    /// everyone (`all`) for a member without one. `conferences` must be those the target was
    /// programmed with (the same members, in the same order).
    pub async fn set_subscriptions(&mut self, conferences: &[Vec<Member>]) -> anyhow::Result<()> {
        let client = self
            .client
            .as_mut()
            .context("subscriptions need a ringbridge target")?;
        for (id, members) in self.conferences.iter().zip(conferences) {
            for m in members {
                client
                    .set_subscription(pb::SetSubscriptionRequest {
                        conference_id: id.clone(),
                        endpoint_id: m.name.clone(),
                        all: m.subscribe.is_none(),
                        endpoints: m.subscribe.clone().unwrap_or_default(),
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("SetSubscription {id}/{}", m.name))?;
            }
        }
        Ok(())
    }

    /// The bridge's own counters, when it has an API.
    pub async fn bridge_stats(&mut self) -> Option<pb::GetStatsResponse> {
        let c = self.client.as_mut()?;
        c.get_stats(pb::GetStatsRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Deletes the conferences the rig created and stops what it started.
    pub async fn close(mut self) {
        if let Some(c) = self.client.as_mut() {
            for id in std::mem::take(&mut self.conferences) {
                let _ = c
                    .delete_conference(pb::DeleteConferenceRequest { conference_id: id })
                    .await;
            }
        }
    }
}

impl Target {
    /// Every process whose CPU counts for this target.
    pub fn pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.pid.into_iter().collect();
        if let Some(p) = &self.peer {
            v.extend(p.pids());
        }
        v
    }

    /// Two ringbridge (uring) bridges relayed to each other (Octo): the first `split` members of
    /// the one conference on the first bridge, the rest on the second. Participants send to the
    /// first bridge's media address, so senders must be among the first `split`.
    pub async fn spawn_relayed(
        members: &[Member],
        split: usize,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let (here, there) = members.split_at(split);
        let mut a = Self::spawn_with(Kind::Uring, &[here.to_vec()], 1, false, extra).await?;
        let mut b = Self::spawn_with(Kind::Uring, &[there.to_vec()], 1, false, extra).await?;
        let (k1, k2) = (vec![0x11u8; 16], vec![0x22u8; 16]);
        let (ma, mb) = (a.media, b.media);
        for (t, remote, tx, rx) in [(&mut a, mb, &k1, &k2), (&mut b, ma, &k2, &k1)] {
            let conference_id = t.conferences[0].clone();
            t.client
                .as_mut()
                .context("a spawned bridge has a client")?
                .add_relay(pb::AddRelayRequest {
                    conference_id,
                    relay_id: "peer".into(),
                    remote_addr: remote.to_string(),
                    link_conference: 1,
                    tx_key: tx.clone(),
                    rx_key: rx.clone(),
                    downstream: false,
                })
                .await
                .context("AddRelay")?;
        }
        a.label = format!(
            "ringbridge uring, relayed {}+{} receivers",
            here.len().saturating_sub(1),
            there.len()
        );
        a.peer = Some(Box::new(b));
        Ok(a)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(p) = self.setup.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}
