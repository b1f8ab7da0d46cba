//! The rig: one UDP socket per participant, a paced sender thread and a receiver thread per run,
//! and exact accounting of what each participant should and did receive.
//!
//! Senders pace with a 1 ms timer (sleeping, never spinning) and send each participant's due
//! packets with one `sendmmsg`. The receiver waits on all sockets with epoll and drains them with
//! `recvmmsg`. Every payload carries a [`Stamp`]; a packet counts once per (receiver, sender,
//! stream, sequence), so loss, duplicates and reordering are exact.
//!
//! With [`Rig::carry_sequences`], RTP sequence numbers (and so SRTP indices) go on from one run
//! to the next, so that the runs of one rig through one bridge (`--find-max`,
//! `--subscribe-cycle`) are never replays to its SRTP contexts.
//!
//! With [`Rig::subscribe`] each participant receives only the senders it subscribes to, and the
//! accounting follows: only their copies are expected, and a copy from any other sender is
//! misrouted.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use ringbridge_dataplane::engine::mmsg::{RecvBatch, SendBatch};
use ringbridge_dataplane::srtp::{Profile, Session, replay};
use ringbridge_proto::v1 as pb;
use socket2::SockAddr;

use crate::target::{Member, Simulcast};
use crate::traffic::{self, Load, MAX_PACKET, Stamp};

/// CPU time of all of `pids` (None when there are none, or one cannot be read).
fn group_ns(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| crate::cpu::process_ns(p)).sum()
}

/// Timer period of the senders.
const TICK: Duration = Duration::from_millis(1);
/// Most packets one participant sends per tick (more carries over: the rig is lagging).
const MAX_BURST: usize = 256;

/// Conferences and participants to simulate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Topology {
    /// Number of conferences.
    pub conferences: usize,
    /// Participants per conference.
    pub participants: usize,
    /// Participants per conference that send (the first ones); the others only receive, like
    /// viewers. At least `participants`: everybody sends.
    pub senders: usize,
    /// Address the participants' sockets bind to.
    pub bind_ip: IpAddr,
    /// SRTP profile every participant uses (`--srtp`), or plain RTP.
    #[serde(serialize_with = "profile_name")]
    pub srtp: Option<Profile>,
}

fn profile_name<S: serde::Serializer>(p: &Option<Profile>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.map_or("none", Profile::name))
}

struct Participant {
    sock: UdpSocket,
    conf: usize,
    srtp: Option<Srtp>,
}

/// A participant's SRTP keys and sessions (it protects with `tx`, unprotects with `rx`).
struct Srtp {
    params: pb::SrtpParams,
    tx: Session,
    rx: Session,
}

impl Srtp {
    fn new(profile: Profile, g: usize) -> Self {
        let n = profile.key_len() + profile.salt_len();
        let key =
            |seed: usize| -> Vec<u8> { (0..n).map(|j| (j * 29 + g * 7 + seed) as u8).collect() };
        let (ek, bk) = (key(1), key(2));
        let session = |k: &[u8]| {
            let (a, b) = k.split_at(profile.key_len());
            Session::new(profile, a, b).expect("valid lengths")
        };
        Srtp {
            tx: session(&ek),
            rx: session(&bk),
            params: pb::SrtpParams {
                profile: profile.name().into(),
                endpoint_key: ek,
                bridge_key: bk,
            },
        }
    }
}

/// How long a run lasts and when it stops.
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// Measured time.
    pub duration: Duration,
    /// Time before the measurement starts (sent, not counted).
    pub warmup: Duration,
    /// Time to wait for packets in flight after the last send.
    pub drain: Duration,
    /// Set to end the run early (Ctrl-C); the result is then partial.
    pub stop: Arc<AtomicBool>,
}

/// Live figures for a progress display.
#[derive(Debug, Default)]
pub struct Live {
    /// Packets received in the measured window so far.
    pub received: AtomicU64,
    /// Packets sent so far.
    pub sent: AtomicU64,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Packets sent, warm-up included.
    pub sent_total: u64,
    /// Packets sent in the measured window.
    pub sent_packets: u64,
    /// Copies the participants should have received from the window's packets (with
    /// [`Rig::subscribe`], of the senders each subscribed to).
    pub expected_packets: u64,
    /// Distinct copies received.
    pub received_packets: u64,
    /// Expected minus received.
    pub lost_packets: u64,
    /// Copies received more than once.
    pub duplicate_packets: u64,
    /// Copies that arrived after a later one of the same stream.
    pub reordered_packets: u64,
    /// Copies delivered to the wrong participant (another conference, the sender itself, or
    /// with [`Rig::subscribe`] a receiver that did not subscribe to the sender), or (with SRTP)
    /// that did not unprotect with the receiver's keys.
    pub misrouted_packets: u64,
    /// Distinct copies received on another SSRC than their sender's stream (rewritten by the
    /// bridge: simulcast receivers, see [`Rig::simulcast`]).
    pub rewritten_packets: u64,
    /// Bytes of distinct copies received.
    pub received_bytes: u64,
    /// Length of the measured window.
    pub window: Duration,
    /// One-way latency of received copies, nanoseconds.
    pub latency_ns: Histogram<u64>,
    /// With [`Rig::split_latency_from`]: the latency of the copies the far participants received.
    pub far_latency_ns: Option<Histogram<u64>>,
    /// CPU time the target process spent during the window.
    pub target_cpu_ns: Option<u64>,
    /// Packets per second the rig meant to send, and what it managed.
    pub offered_pps: f64,
    /// Packets per second sent in the window.
    pub achieved_pps: f64,
    /// True when the run was cut short.
    pub interrupted: bool,
    /// K of [`Rig::subscribe`], if the participants subscribed.
    pub subscribe: Option<usize>,
}

impl RunResult {
    /// Lost over expected.
    pub fn loss_ratio(&self) -> f64 {
        if self.expected_packets == 0 {
            0.0
        } else {
            self.lost_packets as f64 / self.expected_packets as f64
        }
    }

    /// Distinct copies received per second of window.
    pub fn forwarded_pps(&self) -> f64 {
        self.received_packets as f64 / self.window.as_secs_f64().max(1e-9)
    }
}

/// Participants' sockets and the run counter.
pub struct Rig {
    topo: Topology,
    parts: Vec<Participant>,
    streams: usize,
    epoch: Instant,
    runs: u32,
    /// Participants from this index on also record into [`RunResult::far_latency_ns`].
    far_from: Option<usize>,
    /// With [`Rig::subscribe`]: K, and per (receiver, sender's index in its conference) whether
    /// the receiver subscribed to that sender (`n x participants`).
    subscription: Option<(usize, Vec<bool>)>,
    /// Per (participant, stream): the extended sequence number (SRTP index) of its next packet.
    next_index: Vec<u64>,
    /// [`Rig::carry_sequences`]: `next_index` and `rocs` go on from run to run.
    carry: bool,
    /// Per (receiver, sender's index in its conference, stream): rollover tracking for
    /// unprotecting SRTP, kept from run to run like the indices.
    rocs: Vec<replay::Stream>,
    /// [`Rig::simulcast`]: each conference's sender publishes its last stream as a one-layer
    /// simulcast group, and everyone else receives it as one rewritten stream.
    simulcast: bool,
}

/// The SSRC of stream `k` of participant `g`.
pub fn ssrc(g: usize, k: usize) -> u32 {
    0x1000_0000 + (g as u32) * 16 + k as u32
}

/// Per (receiver, sender, stream): which sequence numbers arrived.
#[derive(Default, Clone)]
struct Track {
    seen: Vec<u64>,
    max: Option<u64>,
    received: u64,
    dup: u64,
    reordered: u64,
}

impl Track {
    fn record(&mut self, seq: u64) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.seen.len() {
            self.seen.resize((w + 1).next_power_of_two(), 0);
        }
        if self.seen[w] & (1 << b) != 0 {
            self.dup += 1;
            return false;
        }
        self.seen[w] |= 1 << b;
        self.received += 1;
        if self.max.is_some_and(|m| seq < m) {
            self.reordered += 1;
        }
        self.max = Some(self.max.map_or(seq, |m| m.max(seq)));
        true
    }
}

impl Rig {
    /// Binds one socket per participant; each sends `streams` streams.
    pub fn new(topo: Topology, streams: usize) -> std::io::Result<Self> {
        Self::new_in(topo, streams, None)
    }

    /// [`Rig::new`] with the participants' sockets in network namespace `netns` (as `ip
    /// netns` names it), the rig itself staying where it runs.
    pub fn new_in(topo: Topology, streams: usize, netns: Option<&str>) -> std::io::Result<Self> {
        let mut parts = Vec::new();
        for conf in 0..topo.conferences {
            for _ in 0..topo.participants {
                let at = std::net::SocketAddr::new(topo.bind_ip, 0);
                let sock = match netns {
                    Some(ns) => ringbridge_dataplane::testkit::netns::udp_in(ns, at)?,
                    None => UdpSocket::bind(at)?,
                };
                let s2 = socket2::SockRef::from(&sock);
                let _ = s2.set_recv_buffer_size(4 << 20);
                let _ = s2.set_send_buffer_size(4 << 20);
                sock.set_nonblocking(true)?;
                let srtp = topo.srtp.map(|p| Srtp::new(p, parts.len()));
                parts.push(Participant { sock, conf, srtp });
            }
        }
        Ok(Self {
            topo,
            streams,
            epoch: Instant::now(),
            runs: 0,
            far_from: None,
            subscription: None,
            simulcast: false,
            next_index: vec![0; parts.len() * streams],
            carry: false,
            rocs: Vec::new(),
            parts,
        })
    }

    /// `--subscribe K`: every participant subscribes to `k` senders of its conference, the
    /// senders that follow it in the conference's order (wrapping around, itself skipped; in a
    /// full mesh every sender then has K subscribers). A participant with fewer than `k` other
    /// senders subscribes to all of them (with `--senders S`, a sender has S - 1, a receive-only
    /// participant S). [`Rig::members`] then names each participant's senders for the target to
    /// program, and a run expects only the copies of subscribed senders: a copy from any other
    /// counts as misrouted.
    ///
    /// Fails when `k` exceeds every participant's number of other senders (a typo, not a
    /// subscription to everyone: that is K = participants - 1 in a full mesh).
    pub fn subscribe(&mut self, k: usize) -> anyhow::Result<()> {
        let p = self.topo.participants;
        let senders = self.topo.senders.min(p);
        let most = if senders < p { senders } else { p - 1 };
        anyhow::ensure!(
            k <= most,
            "--subscribe {k}: a participant has at most {most} other senders in its conference"
        );
        let mut wants = vec![false; self.parts.len() * p];
        for g in 0..self.parts.len() {
            let me = g % p;
            let named = (1..p)
                .map(|d| (me + d) % p)
                .filter(|&s| s < senders)
                .take(k);
            for s in named {
                wants[g * p + s] = true;
            }
        }
        self.subscription = Some((k, wants));
        Ok(())
    }

    /// Sequence numbers (SRTP indices) and the receivers' rollover tracking go on from run to
    /// run instead of starting at 0 every run: for runs through one and the same target, whose
    /// SRTP contexts take a run that starts at 0 again as replays. Leave it off when every run
    /// has a fresh target: a fresh SRTP receiver assumes a rollover counter of 0.
    pub fn carry_sequences(&mut self) {
        self.carry = true;
    }

    /// With `on`, [`Rig::members`] makes each conference's one sender publish its last stream
    /// as a simulcast group of one layer and every other participant receive that group as one
    /// stream on an SSRC of its own: the bridge rewrites each copy (SSRC, sequence number,
    /// timestamp) instead of sending the packet as it is. Needs one sender per conference and
    /// plain RTP (the rig checks copies by their payload's stamp, whatever their header).
    pub fn simulcast(&mut self, on: bool) -> anyhow::Result<()> {
        anyhow::ensure!(
            !on || self.topo.senders == 1,
            "simulcast windows need one sender per conference (--senders 1 or --viewers N)"
        );
        anyhow::ensure!(
            !on || self.parts.iter().all(|p| p.srtp.is_none()),
            "simulcast windows need plain RTP (no --srtp)"
        );
        self.simulcast = on;
        Ok(())
    }

    /// Back to no subscriptions (everyone receives every other sender of its conference), as
    /// before [`Rig::subscribe`]; [`Rig::members`] then names none.
    pub fn unsubscribe(&mut self) {
        self.subscription = None;
    }

    /// Whether participant `g` receives the sender with index `s` in its conference: a sender
    /// other than itself it subscribed to (everyone but itself without [`Rig::subscribe`]).
    fn wants(&self, g: usize, s: usize) -> bool {
        let p = self.topo.participants;
        match &self.subscription {
            None => s != g % p,
            Some((_, w)) => w[g * p + s],
        }
    }

    /// Also records the latency of the copies received by participants `from..` apart (for
    /// example the receivers behind a relay), in [`RunResult::far_latency_ns`].
    pub fn split_latency_from(&mut self, from: usize) {
        self.far_from = Some(from);
    }

    /// The conferences as a target must be programmed.
    pub fn members(&self) -> anyhow::Result<Vec<Vec<Member>>> {
        let mut confs = vec![Vec::new(); self.topo.conferences];
        let n = self.topo.participants;
        for (g, p) in self.parts.iter().enumerate() {
            let first = p.conf * n;
            confs[p.conf].push(Member {
                name: format!("p{g}"),
                addr: p.sock.local_addr()?,
                ssrcs: (0..self.streams).map(|k| ssrc(g, k)).collect(),
                srtp: p.srtp.as_ref().map(|s| s.params.clone()),
                subscribe: self.subscription.as_ref().map(|_| {
                    (0..n)
                        .filter(|&s| self.wants(g, s))
                        .map(|s| format!("p{}", first + s))
                        .collect()
                }),
                simulcast: self.simulcast.then(|| {
                    if g == first {
                        Simulcast::Publish(vec![ssrc(g, self.streams - 1)])
                    } else {
                        Simulcast::Receive {
                            publisher: format!("p{first}"),
                            ssrc: 0x5300_0000 + g as u32,
                        }
                    }
                }),
            });
        }
        Ok(confs)
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Runs `load` against `media` for `opts`, measuring the CPU of `pid` if given.
    pub fn run(
        &mut self,
        media: SocketAddr,
        pids: &[u32],
        load: &Load,
        opts: &RunOpts,
        live: &Live,
    ) -> anyhow::Result<RunResult> {
        assert_eq!(
            load.streams.len(),
            self.streams,
            "load must match the rig's streams"
        );
        self.runs += 1;
        let run = self.runs;
        if !self.carry {
            self.next_index.fill(0);
            self.rocs.clear();
        }
        let done = &AtomicBool::new(false);
        let rocs = std::mem::take(&mut self.rocs);
        let this = &*self;
        // One bound for sender and receiver: packets stamped at or after it are measured.
        let warm_end_ns = self.now_ns() + opts.warmup.as_nanos() as u64;
        let (result, sent, rocs) = std::thread::scope(|s| -> anyhow::Result<_> {
            let rx = s.spawn(move || this.receive(run, warm_end_ns, rocs, done, live));
            let tx = this.send(run, media, pids, load, (warm_end_ns, opts), live);
            std::thread::sleep(opts.drain);
            done.store(true, Relaxed);
            let mut rx = rx.join().expect("receiver thread")?;
            let (sent, rocs) = (tx.sent.clone(), std::mem::take(&mut rx.rocs));
            Ok((this.result(tx, rx, load), sent, rocs))
        })?;
        for (next, n) in self.next_index.iter_mut().zip(sent) {
            *next += n;
        }
        self.rocs = rocs;
        Ok(result)
    }

    fn send(
        &self,
        run: u32,
        media: SocketAddr,
        pids: &[u32],
        load: &Load,
        (warm_end_ns, opts): (u64, &RunOpts),
        live: &Live,
    ) -> Sent {
        let to = SockAddr::from(media);
        let n = self.parts.len();
        let k = load.streams.len();
        let mut sent = vec![0u64; n * k];
        let mut at_window = vec![0u64; n * k];
        let mut bufs = vec![[0u8; MAX_PACKET + 32]; MAX_BURST];
        let mut plain = [0u8; MAX_PACKET];
        let mut batch = SendBatch::new(MAX_BURST);
        let t0 = Instant::now();
        let end_ns = warm_end_ns + opts.duration.as_nanos() as u64;
        let mut cpu0 = None;
        let mut window_start = None;
        let window_end;
        let mut interrupted = false;
        let mut next = t0;
        loop {
            let now = Instant::now();
            let now_ns = (now - self.epoch).as_nanos() as u64;
            if opts.stop.load(Relaxed) {
                interrupted = true;
            }
            if window_start.is_none() && (now_ns >= warm_end_ns || interrupted) {
                window_start = Some(now);
                at_window.copy_from_slice(&sent);
                cpu0 = group_ns(pids);
            }
            if now_ns >= end_ns || interrupted {
                window_end = now;
                break;
            }
            let el = (now - t0).as_secs_f64();
            for (g, p) in self.parts.iter().enumerate() {
                if g % self.topo.participants >= self.topo.senders {
                    continue; // receive-only
                }
                let mut used = 0;
                for (j, st) in load.streams.iter().enumerate() {
                    let i = g * k + j;
                    let due = ((el * st.pps) as u64).saturating_sub(sent[i]);
                    for _ in 0..due.min((MAX_BURST - used) as u64) {
                        let index = self.next_index[i] + sent[i];
                        let stamp = Stamp {
                            run,
                            sender: g as u32,
                            stream: j as u32,
                            seq: sent[i],
                            sent_ns: now_ns,
                        };
                        let len = match &p.srtp {
                            None => {
                                traffic::write(&mut bufs[used], ssrc(g, j), index, &stamp, st.size)
                            }
                            Some(s) => {
                                let n =
                                    traffic::write(&mut plain, ssrc(g, j), index, &stamp, st.size);
                                s.tx.protect_rtp(&plain[..n], index, &mut bufs[used])
                                    .expect("room for SRTP")
                            }
                        };
                        // SAFETY: `bufs[used]` is neither moved nor written again before the
                        // flush below, which ends this participant's batch.
                        unsafe { batch.push(&bufs[used][..len], &to) };
                        used += 1;
                        sent[i] += 1;
                    }
                }
                if used > 0 {
                    batch.flush(p.sock.as_raw_fd());
                }
            }
            live.sent.store(sent.iter().sum(), Relaxed);
            next += TICK;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
        let cpu1 = group_ns(pids);
        let start = window_start.unwrap_or(t0);
        let end = window_end;
        Sent {
            window_sent: sent.iter().zip(&at_window).map(|(a, b)| a - b).collect(),
            sent_total: sent.iter().sum(),
            sent,
            window: end.saturating_duration_since(start),
            cpu: cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a)),
            interrupted,
        }
    }

    fn receive(
        &self,
        run: u32,
        warm_end_ns: u64,
        mut rocs: Vec<replay::Stream>,
        done: &AtomicBool,
        live: &Live,
    ) -> anyhow::Result<Received> {
        let mut poll = Poll::new()?;
        let fds: Vec<_> = self.parts.iter().map(|p| p.sock.as_raw_fd()).collect();
        for (g, fd) in fds.iter().enumerate() {
            poll.registry()
                .register(&mut SourceFd(fd), Token(g), Interest::READABLE)?;
        }
        let p = self.topo.participants;
        let k = self.streams;
        let mut tracks = vec![Track::default(); self.parts.len() * p * k];
        rocs.resize(tracks.len(), replay::Stream::default());
        let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
        let mut far = self.far_from.map(|_| latency.clone());
        let far_from = self.far_from.unwrap_or(usize::MAX);
        let mut misrouted = 0u64;
        let mut rewritten = 0u64;
        let mut srtp_failed = 0u64;
        let mut bytes = 0u64;
        let mut received = 0u64;
        let mut batch = RecvBatch::new(64);
        let mut events = Events::with_capacity(256);
        let mut pending: Vec<Token> = Vec::new();
        while !done.load(Relaxed) {
            poll.poll(&mut events, Some(Duration::from_millis(20)))?;
            pending.extend(events.iter().map(|e| e.token()));
            // Edge-triggered: drain every ready socket.
            for Token(g) in pending.drain(..) {
                loop {
                    let n = batch.recv(fds[g])?;
                    if n == 0 {
                        break;
                    }
                    let now_ns = self.now_ns();
                    for i in 0..n {
                        let Ok((pkt, _)) = batch.get_mut(i) else {
                            continue;
                        };
                        let pkt = match &self.parts[g].srtp {
                            None => &*pkt,
                            Some(s) => match self.unprotect(&s.rx, g, pkt, &mut rocs) {
                                Some(n) => &pkt[..n],
                                None => {
                                    srtp_failed += 1;
                                    continue;
                                }
                            },
                        };
                        let Some(st) = traffic::read(pkt) else {
                            continue;
                        };
                        if st.run != run || st.sent_ns < warm_end_ns {
                            continue;
                        }
                        let sender = st.sender as usize;
                        if sender == g
                            || self.parts.get(sender).map(|s| s.conf) != Some(self.parts[g].conf)
                            || !self.wants(g, sender % p)
                        {
                            misrouted += 1;
                            continue;
                        }
                        let t = &mut tracks[(g * p + sender % p) * k + st.stream as usize];
                        if t.record(st.seq) {
                            received += 1;
                            bytes += pkt.len() as u64;
                            let own = ssrc(sender, st.stream as usize).to_be_bytes();
                            if pkt.get(8..12) != Some(&own[..]) {
                                rewritten += 1;
                            }
                            let ns = now_ns.saturating_sub(st.sent_ns).max(1);
                            let _ = latency.record(ns);
                            if let Some(f) = far.as_mut().filter(|_| g >= far_from) {
                                let _ = f.record(ns);
                            }
                        }
                    }
                    live.received.store(received, Relaxed);
                }
            }
        }
        for fd in &fds {
            let _ = poll.registry().deregister(&mut SourceFd(fd));
        }
        Ok(Received {
            tracks,
            rocs,
            latency,
            far,
            misrouted: misrouted + srtp_failed,
            rewritten,
            bytes,
        })
    }

    /// Unprotects an SRTP copy received by participant `g`, finding its rollover counter from
    /// the sender and stream its (clear) SSRC names. `None` if it does not verify.
    fn unprotect(
        &self,
        s: &Session,
        g: usize,
        pkt: &mut [u8],
        rocs: &mut [replay::Stream],
    ) -> Option<usize> {
        let ssrc = u32::from_be_bytes(pkt.get(8..12)?.try_into().ok()?);
        let rel = ssrc.checked_sub(0x1000_0000)? as usize;
        let (sender, stream) = (rel / 16, rel % 16);
        let p = self.topo.participants;
        if sender >= self.parts.len() || stream >= self.streams {
            return None;
        }
        let roc = &mut rocs[(g * p + sender % p) * self.streams + stream];
        let index = roc.estimate(u16::from_be_bytes([pkt[2], pkt[3]]));
        let n = s.unprotect_rtp(pkt, index).ok()?;
        roc.accept(index);
        Some(n)
    }

    fn result(&self, tx: Sent, rx: Received, load: &Load) -> RunResult {
        let p = self.topo.participants;
        let k = self.streams;
        let mut expected = 0u64;
        let mut received = 0u64;
        let mut dup = 0u64;
        let mut reordered = 0u64;
        for (g, part) in self.parts.iter().enumerate() {
            for s_local in 0..p {
                let sender = part.conf * p + s_local;
                if !self.wants(g, s_local) {
                    continue;
                }
                for j in 0..k {
                    let want = tx.window_sent[sender * k + j];
                    let t = &rx.tracks[(g * p + s_local) * k + j];
                    expected += want;
                    received += t.received;
                    dup += t.dup;
                    reordered += t.reordered;
                }
            }
        }
        let secs = tx.window.as_secs_f64().max(1e-9);
        let sent_packets: u64 = tx.window_sent.iter().sum();
        RunResult {
            sent_total: tx.sent_total,
            sent_packets,
            expected_packets: expected,
            received_packets: received,
            lost_packets: expected.saturating_sub(received),
            duplicate_packets: dup,
            reordered_packets: reordered,
            misrouted_packets: rx.misrouted,
            rewritten_packets: rx.rewritten,
            received_bytes: rx.bytes,
            window: tx.window,
            latency_ns: rx.latency,
            far_latency_ns: rx.far,
            target_cpu_ns: tx.cpu,
            offered_pps: load.pps_per_participant()
                * (self.topo.conferences * self.topo.senders.min(p)) as f64,
            achieved_pps: sent_packets as f64 / secs,
            interrupted: tx.interrupted,
            subscribe: self.subscription.as_ref().map(|(k, _)| *k),
        }
    }
}

struct Sent {
    window_sent: Vec<u64>,
    sent_total: u64,
    /// Per (participant, stream), warm-up included.
    sent: Vec<u64>,
    window: Duration,
    cpu: Option<u64>,
    interrupted: bool,
}

struct Received {
    tracks: Vec<Track>,
    rocs: Vec<replay::Stream>,
    latency: Histogram<u64>,
    far: Option<Histogram<u64>>,
    misrouted: u64,
    rewritten: u64,
    bytes: u64,
}
