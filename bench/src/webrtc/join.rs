//! Many clients joining at once: each WebRTC endpoint added to a bridge over its API, then ICE
//! and DTLS from its own socket on the rig's tokio runtime (one task per client), as a browser
//! does against the bridge's media port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use ringbridge_dataplane::webrtc::stun::{Class, Message, TransactionId};
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;
use serde::Serialize;
use tonic::transport::Channel;

use super::{ClientCert, ClientProgress, Credentials, Keys, Version, dtls_client, poll_client};

/// How long one handshake may take before it counts as failed.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Why a client's handshake did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// No answer to its checks.
    Ice,
    /// dimpl's client failed or gave up.
    Dtls,
    /// Not done within [`HANDSHAKE_LIMIT`].
    Timeout,
}

/// ICE (nominating checks every 200 ms until one is answered) then DTLS as the client, from
/// `sock`; the SRTP keys once connected.
pub async fn connect(
    sock: &tokio::net::UdpSocket,
    media: SocketAddr,
    creds: &Credentials,
    cert: &ClientCert,
    version: Version,
) -> Result<Keys, Failure> {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_LIMIT;
    let mut buf = [0u8; 2048];
    loop {
        let check = creds.binding_request(true, TransactionId::random());
        sock.send_to(&check, media)
            .await
            .map_err(|_| Failure::Ice)?;
        let wait = tokio::time::Instant::now() + Duration::from_millis(200);
        match tokio::time::timeout_at(wait.min(deadline), sock.recv(&mut buf)).await {
            Ok(Ok(n))
                if Message::parse(&buf[..n]).is_ok_and(|m| m.class() == Class::SuccessResponse) =>
            {
                break;
            }
            _ if tokio::time::Instant::now() >= deadline => return Err(Failure::Ice),
            _ => {}
        }
    }
    let mut client = dtls_client(version, cert, Instant::now());
    let mut progress = ClientProgress::default();
    loop {
        client
            .handle_timeout(Instant::now())
            .map_err(|_| Failure::Dtls)?;
        let mut out = Vec::new();
        poll_client(&mut client, &mut progress, |d| out.push(d.to_vec()));
        for d in &out {
            sock.send_to(d, media).await.map_err(|_| Failure::Dtls)?;
        }
        if let Some((profile, km)) = progress.material.as_ref().filter(|_| progress.connected) {
            return Keys::from_export(*profile, km).ok_or(Failure::Dtls);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Failure::Timeout);
        }
        let timer = progress
            .timeout
            .map_or(Duration::from_millis(50), |t| {
                t.saturating_duration_since(Instant::now())
            })
            .clamp(Duration::from_millis(1), Duration::from_millis(50));
        if let Ok(Ok(n)) = tokio::time::timeout_at(now + timer, sock.recv(&mut buf)).await
            && (20..=63).contains(&buf[0])
        {
            // A datagram dimpl refuses is its business; its timers decide the outcome.
            let _ = client.handle_packet(&buf[..n]);
        }
    }
}

/// One client: its credentials, the certificate it presents, the version it offers.
pub struct Joiner {
    /// Its ICE credentials.
    pub creds: Credentials,
    /// The certificate it presents (its fingerprint goes into AddEndpoint).
    pub cert: ClientCert,
    /// The DTLS version it offers.
    pub version: Version,
}

impl Joiner {
    /// Its AddEndpoint into `conference`, sending `ssrcs`.
    pub fn add_request(&self, conference: &str, ssrcs: Vec<u32>) -> pb::AddEndpointRequest {
        pb::AddEndpointRequest {
            conference_id: conference.into(),
            endpoint_id: self.creds.local_ufrag.clone(),
            ssrcs,
            webrtc: Some(self.creds.params(&self.cert.fingerprint)),
            ..Default::default()
        }
    }
}

/// Creates conference `conference` and adds `joiners` to it, in one Apply; the first sends
/// `publisher_ssrc` when given, the others (and otherwise all) only receive.
pub async fn add_all(
    api: &mut BridgeClient<Channel>,
    conference: &str,
    joiners: &[Joiner],
    publisher_ssrc: Option<u32>,
) -> anyhow::Result<()> {
    let mut changes = vec![pb::Change {
        change: Some(pb::change::Change::CreateConference(
            pb::CreateConferenceRequest {
                conference_id: conference.into(),
            },
        )),
    }];
    for (i, j) in joiners.iter().enumerate() {
        let ssrcs = match publisher_ssrc {
            Some(ssrc) if i == 0 => vec![ssrc],
            _ => vec![],
        };
        changes.push(pb::Change {
            change: Some(pb::change::Change::AddEndpoint(
                j.add_request(conference, ssrcs),
            )),
        });
    }
    let results = api
        .apply(pb::ApplyRequest { changes })
        .await?
        .into_inner()
        .results;
    if let Some(r) = results.iter().find(|r| r.code != 0) {
        bail!("Apply in {conference}: {}", r.message);
    }
    Ok(())
}

/// What a burst of handshakes did.
#[derive(Debug, Default, Serialize)]
pub struct Burst {
    /// Clients that connected with keys.
    pub completed: u32,
    /// Clients that did not, by [`Failure`] (lowercase).
    pub failed: BTreeMap<String, u32>,
    /// First check sent -> keys, ms, of those that connected: median.
    pub handshake_ms_p50: f64,
    /// 99th percentile.
    pub handshake_ms_p99: f64,
    /// Largest.
    pub handshake_ms_max: f64,
}

/// A connected client: its socket and SRTP keys.
pub type Established = (tokio::net::UdpSocket, Keys);

/// Runs every joiner's handshake at once (one task each); returns what happened and the
/// established sockets and keys of those that connected, in joiner order.
pub async fn burst(
    media: SocketAddr,
    joiners: Vec<Joiner>,
    sockets: Vec<tokio::net::UdpSocket>,
) -> (Burst, Vec<Option<Established>>) {
    let mut set = tokio::task::JoinSet::new();
    for (i, (j, sock)) in joiners.into_iter().zip(sockets).enumerate() {
        set.spawn(async move {
            let t = Instant::now();
            let r = connect(&sock, media, &j.creds, &j.cert, j.version).await;
            (i, t.elapsed(), r.map(|k| (sock, k)))
        });
    }
    let mut out = Burst::default();
    let mut times = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut established: Vec<Option<Established>> = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (i, took, r) = joined.expect("handshake task panicked");
        if established.len() <= i {
            established.resize_with(i + 1, || None);
        }
        match r {
            Ok(e) => {
                out.completed += 1;
                times.saturating_record(took.as_micros() as u64);
                established[i] = Some(e);
            }
            Err(f) => {
                *out.failed
                    .entry(format!("{f:?}").to_lowercase())
                    .or_default() += 1
            }
        }
    }
    out.handshake_ms_p50 = times.value_at_quantile(0.5) as f64 / 1e3;
    out.handshake_ms_p99 = times.value_at_quantile(0.99) as f64 / 1e3;
    out.handshake_ms_max = times.max() as f64 / 1e3;
    (out, established)
}

/// `n` joiners numbered on from `*next`, alternating DTLS 1.2 and 1.3, each with a socket on
/// 127.0.0.1 (4 MiB receive buffer).
pub async fn joiners(
    n: u32,
    next: &mut u32,
    certs: &[ClientCert],
) -> anyhow::Result<(Vec<Joiner>, Vec<tokio::net::UdpSocket>)> {
    let mut js = Vec::new();
    let mut socks = Vec::new();
    for _ in 0..n {
        *next += 1;
        js.push(Joiner {
            creds: Credentials::new(*next),
            cert: certs[*next as usize % certs.len()].clone(),
            version: if next.is_multiple_of(2) {
                Version::V12
            } else {
                Version::V13
            },
        });
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        s.set_recv_buffer_size(4 << 20)?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        socks.push(tokio::net::UdpSocket::from_std(s.into())?);
    }
    Ok((js, socks))
}
