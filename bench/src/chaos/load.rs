//! The soak's participants: one UDP socket each (it sends and receives on it), numbered packets
//! paced at a fixed rate to the bridge the control plane placed it on, every packet received
//! handed to the [`Checker`]. One thread does all the sockets' I/O in ticks; the run's tasks
//! add, move and retire participants between ticks.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ringbridge_dataplane::srtp::{Profile, Session, replay, rtp_header_len};
use ringbridge_dataplane::testkit::{RTP_HEADER_LEN, write_rtp_header};

use super::check::{Checker, STAMP_LEN, Stamp};

/// The SRTP profile of the SRTP conferences.
pub const PROFILE: Profile = Profile::AeadAes128Gcm;
/// Bytes of every plain soak packet.
const PACKET_LEN: usize = 64;
/// How often the I/O thread wakes.
const TICK: Duration = Duration::from_millis(5);

/// What a participant does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Sends and receives in a conference.
    Talker,
    /// Sends a broadcast.
    Publisher,
    /// Receives a broadcast.
    Viewer,
}

/// One participant.
pub struct Member {
    /// Its SSRC, and its participant id is `p{id}`.
    pub id: u32,
    /// Its conference's index.
    pub conf: u32,
    /// What it does.
    pub role: Role,
    /// Its socket; closed a while after it left (the member stays, for the report).
    sock: Option<UdpSocket>,
    /// The media address of the bridge it sends to (none until placed).
    pub to: Option<SocketAddr>,
    /// Bridges it was placed on, with the time (ms) each placement was learnt.
    pub bridges: Vec<(u64, String)>,
    tx: Option<Session>,
    rx: Option<(Session, HashMap<u32, replay::Stream>)>,
    /// Packets per second it sends (0: none).
    pub pps: u32,
    next_ms: u64,
    /// Packets sent.
    pub sent: u64,
    /// Its leave was acknowledged (it keeps its socket a while to catch late deliveries).
    pub left_ms: Option<u64>,
    /// When its join was acknowledged.
    pub joined_ms: u64,
}

impl Member {
    /// The participant id the control plane knows it by.
    pub fn pid(&self) -> String {
        format!("p{}", self.id)
    }

    /// The bridge it was on at `ms` (as far as the run learnt it).
    pub fn bridge_at(&self, ms: u64) -> Option<&str> {
        self.bridges
            .iter()
            .rev()
            .find(|(t, _)| *t <= ms)
            .or(self.bridges.first())
            .map(|(_, b)| b.as_str())
    }

    /// The bridge it is on now.
    pub fn bridge(&self) -> Option<&str> {
        self.bridges.last().map(|(_, b)| b.as_str())
    }
}

/// A participant about to join: its socket and keys, made before the join request.
pub struct Pending {
    /// Its SSRC.
    pub id: u32,
    /// Its socket's address (the join's `remote_addr`).
    pub addr: SocketAddr,
    sock: UdpSocket,
    /// Its SRTP master key + salt, for an SRTP participant.
    pub key: Option<Vec<u8>>,
}

impl Pending {
    /// A new participant `id` with a loopback socket, on SRTP when `srtp`.
    pub fn new(id: u32, srtp: bool) -> std::io::Result<Self> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_nonblocking(true)?;
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(1 << 20);
        let key = srtp.then(|| random_bytes(PROFILE.key_len() + PROFILE.salt_len()));
        Ok(Pending {
            id,
            addr: sock.local_addr()?,
            sock,
            key,
        })
    }
}

/// Random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    let _ = rustix::rand::getrandom(&mut v, rustix::rand::GetRandomFlags::empty());
    v
}

fn session(key_and_salt: &[u8]) -> Option<Session> {
    let (k, s) = key_and_salt.split_at_checked(PROFILE.key_len())?;
    Session::new(PROFILE, k, s).ok()
}

/// Everything the I/O thread and the run share.
pub struct Load {
    /// The run's start: every time is ms since it.
    pub t0: Instant,
    /// Participants, those that left too (their sockets closed after a while), by id.
    pub members: BTreeMap<u32, Member>,
    /// The checker.
    pub checker: Checker,
    /// RTCP packets received (not checked: the bridge's own feedback).
    pub rtcp: u64,
    /// Packets sent in all.
    pub sent: u64,
}

impl Load {
    /// ms since the start.
    pub fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    /// Adds a participant whose join was acknowledged: placed on `bridge` at `media`, with the
    /// bridge's key `bridge_key` for an SRTP participant.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        p: Pending,
        conf: u32,
        role: Role,
        pps: u32,
        bridge: String,
        media: Option<SocketAddr>,
        bridge_key: Option<&[u8]>,
    ) {
        let now = self.now_ms();
        self.checker.joined(p.id, conf);
        let tx = p.key.as_deref().and_then(session);
        let rx = bridge_key.and_then(session).map(|s| (s, HashMap::new()));
        self.members.insert(
            p.id,
            Member {
                id: p.id,
                conf,
                role,
                sock: Some(p.sock),
                to: media,
                bridges: vec![(now, bridge)],
                tx,
                rx,
                pps,
                next_ms: now,
                sent: 0,
                left_ms: None,
                joined_ms: now,
            },
        );
    }

    /// Participant `id` is on `bridge` at `media` now.
    pub fn placed(&mut self, id: u32, bridge: &str, media: SocketAddr) {
        let now = self.now_ms();
        if let Some(m) = self.members.get_mut(&id)
            && m.left_ms.is_none()
        {
            m.to = Some(media);
            if m.bridge() != Some(bridge) {
                m.bridges.push((now, bridge.to_string()));
            }
        }
    }

    /// Participant `id` stops sending (its leave is on its way).
    pub fn stop_sending(&mut self, id: u32) {
        if let Some(m) = self.members.get_mut(&id) {
            m.pps = 0;
        }
    }

    /// Participant `id`'s leave was acknowledged.
    pub fn left(&mut self, id: u32) {
        let now = self.now_ms();
        if let Some(m) = self.members.get_mut(&id) {
            m.pps = 0;
            m.left_ms = Some(now);
        }
        self.checker.left(id, now);
    }

    /// Closes the sockets of participants that left more than `linger` ago.
    pub fn close_left(&mut self, linger: Duration) {
        let now = self.now_ms();
        let linger = linger.as_millis() as u64;
        for m in self.members.values_mut() {
            if m.sock.is_some() && m.left_ms.is_some_and(|t| now > t + linger) {
                m.sock = None;
                self.checker.forget(m.id);
            }
        }
    }

    /// One tick: every socket drained into the checker, every packet due sent.
    fn tick(&mut self, buf: &mut [u8; 2048], out: &mut [u8; 2048]) {
        let now = self.now_ms();
        let Load {
            members,
            checker,
            rtcp,
            sent,
            ..
        } = self;
        for m in members.values_mut() {
            let Some(sock) = &m.sock else { continue };
            while let Ok(n) = sock.recv(buf) {
                let pkt = &mut buf[..n];
                if n >= 2 && (64..96).contains(&(pkt[1] & 0x7f)) {
                    *rtcp += 1;
                    continue;
                }
                let plain = match &mut m.rx {
                    None => Some(n),
                    Some((s, streams)) if n >= RTP_HEADER_LEN => {
                        let ssrc = u32::from_be_bytes(pkt[8..12].try_into().unwrap());
                        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
                        let st = streams.entry(ssrc).or_default();
                        let index = st.estimate(seq);
                        match s.unprotect_rtp(pkt, index) {
                            Ok(len) => {
                                st.accept(index);
                                Some(len)
                            }
                            Err(e) => {
                                checker.undecodable(m.id, now, &format!("SRTP: {e:?}"));
                                None
                            }
                        }
                    }
                    Some(_) => None,
                };
                let Some(len) = plain else { continue };
                let stamp = rtp_header_len(&pkt[..len]).and_then(|hl| Stamp::read(&pkt[hl..len]));
                match stamp {
                    Some(s) => checker.packet(m.id, now, s),
                    None => checker.undecodable(m.id, now, "no soak stamp"),
                }
            }
            if m.pps == 0 || m.left_ms.is_some() {
                continue;
            }
            let Some(to) = m.to else { continue };
            let every = 1000 / u64::from(m.pps);
            if now < m.next_ms {
                continue;
            }
            // Behind (a slow tick): one packet now, the pace goes on from here.
            m.next_ms = (m.next_ms + every).max(now + every / 2);
            let counter = m.sent;
            let mut plain = [0u8; PACKET_LEN];
            write_rtp_header(
                &mut plain,
                m.id,
                counter as u16,
                (counter as u32).wrapping_mul(960),
            );
            Stamp {
                conf: m.conf,
                sender: m.id,
                counter,
                sent_ms: now as u32,
            }
            .write(&mut plain[RTP_HEADER_LEN..RTP_HEADER_LEN + STAMP_LEN]);
            let pkt: &[u8] = match &m.tx {
                None => &plain,
                Some(s) => match s.protect_rtp(&plain, counter, out) {
                    Ok(len) => &out[..len],
                    Err(_) => continue,
                },
            };
            if sock.send_to(pkt, to).is_ok() {
                m.sent += 1;
                *sent += 1;
            }
        }
    }
}

/// The shared load and its I/O thread.
pub struct Rig {
    load: Arc<Mutex<Load>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Rig {
    /// Starts the I/O thread; the start of the run is `t0`.
    pub fn start(t0: Instant, leave_grace_ms: u64) -> Self {
        let load = Arc::new(Mutex::new(Load {
            t0,
            members: BTreeMap::new(),
            checker: Checker::new(leave_grace_ms),
            rtcp: 0,
            sent: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (load.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("chaos-rig".into())
            .spawn(move || {
                let (mut buf, mut out) = ([0u8; 2048], [0u8; 2048]);
                while !s.load(Ordering::Relaxed) {
                    l.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .tick(&mut buf, &mut out);
                    std::thread::sleep(TICK);
                }
            })
            .ok();
        Rig { load, stop, thread }
    }

    /// The shared state, locked (briefly: the I/O thread waits meanwhile).
    pub fn lock(&self) -> MutexGuard<'_, Load> {
        self.load.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
