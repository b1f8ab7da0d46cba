//! Test harness: starts the real `ringbridge` binary on loopback, talks to it over gRPC and UDP.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringbridge_dataplane::testkit;
use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;
use tonic::transport::Channel;

/// Runs each named async test once per engine, as `uring::name` and `mio::name`.
#[macro_export]
macro_rules! per_engine {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("uring").await
                }
            )*
        }
        mod mio {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("mio").await
                }
            )*
        }
    };
}

/// A running bridge process; killed on drop.
pub struct Bridge {
    child: Child,
    pub media: SocketAddr,
    pub api: SocketAddr,
    pub engine: String,
    pub client: BridgeClient<Channel>,
    /// The Prometheus endpoint, when started with `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// The ready line's fields.
    pub ready: ringbridge_edge::ready::Ready,
}

impl Bridge {
    /// Starts a bridge with `engine` and two workers on 127.0.0.1.
    pub async fn start(engine: &str) -> Self {
        Self::start_on(engine, "127.0.0.1").await
    }

    /// Starts a bridge whose media socket binds `ip` (e.g. "::1").
    pub async fn start_on(engine: &str, ip: &str) -> Self {
        Self::start_with(engine, ip, &[]).await
    }

    /// Starts a bridge on `ip` with extra command-line arguments.
    pub async fn start_with(engine: &str, ip: &str, extra: &[&str]) -> Self {
        let ip: IpAddr = ip.parse().unwrap();
        Self::launch(Launch {
            media: SocketAddr::new(ip, 0),
            extra,
            ..Launch::new(engine)
        })
        .await
    }

    /// Starts a bridge as `l` says.
    pub async fn launch(l: Launch<'_>) -> Self {
        let bin = env!("CARGO_BIN_EXE_ringbridge");
        let mut cmd = match l.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => Command::new(bin),
        };
        let api = match l.netns {
            Some(_) => SocketAddr::new(l.media.ip(), 0),
            None => "127.0.0.1:0".parse().unwrap(),
        };
        cmd.args(["--engine", l.engine, "--workers", "2"])
            .arg("--api")
            .arg(api.to_string())
            .args(l.extra)
            .arg("--media")
            .arg(l.media.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        if let Some(f) = l.stderr {
            cmd.stderr(f);
        }
        let mut child = cmd.spawn().expect("spawn ringbridge");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready = ringbridge_edge::ready::Ready::parse(&line)
            .unwrap_or_else(|| panic!("not a ready line: {line:?}"));
        let field = |k: &str| -> String {
            ready
                .get(k)
                .unwrap_or_else(|| panic!("no {k}= in ready line {line:?}"))
                .to_string()
        };
        let (media, api, got) = (field("media"), field("api"), field("engine"));
        let metrics = ready.get("metrics").map(|m| m.parse().unwrap());
        assert_eq!(
            got,
            l.expect.unwrap_or(l.engine),
            "bridge runs the engine the test expects"
        );
        let api: SocketAddr = api.parse().unwrap();
        let client = BridgeClient::connect(format!("http://{api}"))
            .await
            .unwrap();
        Bridge {
            child,
            media: media.parse().unwrap(),
            api,
            engine: got,
            client,
            metrics,
            ready,
        }
    }

    /// SIGKILLs the bridge and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a bridge with `engine` on 127.0.0.1 serving Prometheus metrics, with extra
    /// command-line arguments.
    pub async fn start_with_metrics(engine: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--metrics", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Self::start_with(engine, "127.0.0.1", &args).await
    }

    /// The value of the sample `series` (name with labels, as exposed, e.g.
    /// `ringbridge_dropped_packets{reason="relay_hop_limit"}`) on the bridge's `/metrics`.
    pub fn metric(&self, series: &str) -> f64 {
        use std::io::{Read, Write};
        let addr = self.metrics.expect("started with --metrics");
        // A small local read: blocking is fine (the bridge is another process).
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        conn.read_to_string(&mut body).unwrap();
        body.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{body}"))
    }

    pub async fn conference(&mut self, id: &str) {
        self.client
            .create_conference(pb::CreateConferenceRequest {
                conference_id: id.into(),
            })
            .await
            .unwrap();
    }

    /// Adds `p` to `conf` with its address (or latching when `latch`).
    pub async fn add(&mut self, conf: &str, p: &Party, latch: bool) {
        self.add_with(conf, p, latch, None).await
    }

    /// Adds `p` to `conf`, with SRTP parameters when given.
    pub async fn add_with(
        &mut self,
        conf: &str,
        p: &Party,
        latch: bool,
        srtp: Option<pb::SrtpParams>,
    ) {
        let r = self
            .client
            .add_endpoint(pb::AddEndpointRequest {
                conference_id: conf.into(),
                endpoint_id: p.name.clone(),
                ssrcs: vec![p.ssrc],
                remote_addr: if latch {
                    String::new()
                } else {
                    p.addr().to_string()
                },
                srtp,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.media_addr, self.media.to_string());
    }

    pub async fn list(&mut self) -> pb::ListConferencesResponse {
        self.client
            .list_conferences(pb::ListConferencesRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn stats(&mut self) -> pb::GetStatsResponse {
        self.client
            .get_stats(pb::GetStatsRequest {})
            .await
            .unwrap()
            .into_inner()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An AddRelay request: `conf`'s relay `id` to `remote` over link conference `link`, sealing
/// with `tx` and opening with `rx`.
pub fn relay_req(
    conf: &str,
    id: &str,
    remote: SocketAddr,
    link: u32,
    tx: &[u8],
    rx: &[u8],
) -> pb::AddRelayRequest {
    pb::AddRelayRequest {
        conference_id: conf.into(),
        relay_id: id.into(),
        remote_addr: remote.to_string(),
        link_conference: link,
        tx_key: tx.to_vec(),
        rx_key: rx.to_vec(),
        downstream: false,
    }
}

/// How to start a bridge ([`Bridge::launch`]).
pub struct Launch<'a> {
    /// `--engine`.
    pub engine: &'a str,
    /// The engine the ready line must name (default: `engine`).
    pub expect: Option<&'a str>,
    /// `--media` (port 0: any).
    pub media: SocketAddr,
    /// More arguments.
    pub extra: &'a [&'a str],
    /// A network namespace to run it in (its API then listens on the media address's IP).
    pub netns: Option<&'a str>,
    /// Where its log goes (default: the test's stderr).
    pub stderr: Option<std::fs::File>,
}

impl<'a> Launch<'a> {
    /// `engine` on 127.0.0.1, nothing else.
    pub fn new(engine: &'a str) -> Self {
        Launch {
            engine,
            expect: None,
            media: "127.0.0.1:0".parse().unwrap(),
            extra: &[],
            netns: None,
            stderr: None,
        }
    }
}

/// A participant: a UDP socket and the SSRC it sends.
pub struct Party {
    pub name: String,
    pub ssrc: u32,
    pub sock: UdpSocket,
}

impl Party {
    pub fn new(name: &str, ssrc: u32) -> Self {
        Self::on(name, ssrc, "127.0.0.1")
    }

    pub fn on(name: &str, ssrc: u32, ip: &str) -> Self {
        let ip: IpAddr = ip.parse().unwrap();
        Self::with_socket(name, ssrc, UdpSocket::bind((ip, 0)).unwrap())
    }

    /// A party on a socket made elsewhere (e.g. in a network namespace).
    pub fn with_socket(name: &str, ssrc: u32, sock: UdpSocket) -> Self {
        socket2::SockRef::from(&sock)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
        Party {
            name: name.into(),
            ssrc,
            sock,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// The RTP packet this party sends as number `n`: unique bytes per party and number.
    pub fn packet(&self, n: u16) -> Vec<u8> {
        let mut payload = format!("{}:{n}:", self.name).into_bytes();
        payload.extend((0..(n % 64) as u8 + 100).map(|b| b ^ self.ssrc as u8));
        testkit::rtp(self.ssrc, n, u32::from(n) * 960, &payload)
    }

    pub fn send(&self, to: SocketAddr, pkt: &[u8]) {
        self.sock.send_to(pkt, to).unwrap();
    }
}

/// Receives on `sock` until `expected` datagrams arrived (or 10 s passed), then for another
/// `linger` to catch duplicates and strays. Expecting 0 listens for `linger` only.
pub fn collect(sock: &UdpSocket, expected: usize, linger: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut extra_until = (expected == 0).then(|| Instant::now() + linger);
    loop {
        let now = Instant::now();
        let until = extra_until.unwrap_or(deadline);
        if now >= until {
            break;
        }
        sock.set_read_timeout(Some(until - now)).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => got.push(buf[..n].to_vec()),
            Err(_) => break,
        }
        if got.len() >= expected && extra_until.is_none() {
            extra_until = Some(Instant::now() + linger);
        }
    }
    got
}

/// Every party sends `count` RTP packets (paced); returns what each received, sorted.
pub fn exchange(
    parties: &[&Party],
    media: SocketAddr,
    count: u16,
    expected: &[usize],
) -> Vec<Vec<Vec<u8>>> {
    let to: Vec<(&Party, SocketAddr)> = parties.iter().map(|p| (*p, media)).collect();
    exchange_via(&to, count, expected, Duration::from_millis(200))
}

/// [`exchange`] with each party sending to a bridge of its own, listening `linger` after the
/// expected count for strays.
pub fn exchange_via(
    parties: &[(&Party, SocketAddr)],
    count: u16,
    expected: &[usize],
    linger: Duration,
) -> Vec<Vec<Vec<u8>>> {
    std::thread::scope(|s| {
        let rx: Vec<_> = parties
            .iter()
            .zip(expected)
            .map(|((p, _), &e)| s.spawn(move || collect(&p.sock, e, linger)))
            .collect();
        for n in 0..count {
            for (p, media) in parties {
                p.send(*media, &p.packet(n));
            }
            if n % 8 == 7 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        rx.into_iter()
            .map(|h| {
                let mut v = h.join().unwrap();
                v.sort();
                v
            })
            .collect()
    })
}

/// What `parties[me]` must receive: every other party's packets, once each, sorted.
pub fn expected_for(parties: &[&Party], me: usize, count: u16) -> Vec<Vec<u8>> {
    let mut v: Vec<_> = parties
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != me)
        .flat_map(|(_, p)| (0..count).map(|n| p.packet(n)))
        .collect();
    v.sort();
    v
}

/// Asserts exact delivery, with a readable summary instead of a byte dump on failure.
pub fn assert_exact(parties: &[&Party], got: &[Vec<Vec<u8>>], count: u16) {
    for (i, p) in parties.iter().enumerate() {
        let want = expected_for(parties, i, count);
        if got[i] != want {
            let by_ssrc = |v: &[Vec<u8>]| {
                let mut m = BTreeMap::<u32, usize>::new();
                for pkt in v {
                    *m.entry(u32::from_be_bytes(pkt[8..12].try_into().unwrap()))
                        .or_default() += 1;
                }
                m
            };
            panic!(
                "{} (ssrc {}) got {} packets by ssrc {:?}, want {} by ssrc {:?}",
                p.name,
                p.ssrc,
                got[i].len(),
                by_ssrc(&got[i]),
                want.len(),
                by_ssrc(&want)
            );
        }
    }
}
