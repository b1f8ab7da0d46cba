//! I/O engines: each runs N worker threads that receive on their own `SO_REUSEPORT` socket, ask
//! their [`Core`](crate::core::Core) for a verdict and send the copies.
//!
//! - [`uring`]: io_uring with multishot `recvmsg` into a provided buffer ring and one `sendmsg`
//!   SQE per copy, all pointing at the received buffer.
//! - [`mio`]: epoll with `recvmmsg`/`sendmmsg` batches; the fallback.
//! - [`xdp`]: AF_XDP (kernel bypass) on one interface, beside the socket engine that serves
//!   whatever the kernel still receives on the media port.

pub mod mio;
pub mod mmsg;
pub mod pin;
pub mod sockaddr;
pub mod steer;
pub mod uring;
mod worker;
pub mod xdp;

use std::net::SocketAddr;
use std::str::FromStr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::publish::{Channels, WorkerLink};

pub use crate::core::{MAX_DATAGRAM, MAX_RELAY_DATAGRAM};

/// Bytes a worker receives a datagram into: room for the largest relay packet, so the largest
/// endpoint datagram crosses a relay. The core drops an endpoint datagram over
/// [`MAX_DATAGRAM`] (and a truncated one) as malformed, so every engine accepts the same sizes.
pub const RECV_SIZE: usize = MAX_RELAY_DATAGRAM;
/// Room for one copy written by the worker: a plain packet of up to [`MAX_DATAGRAM`] plus the
/// largest SRTP/SRTCP overhead (20 bytes) or a relay envelope (32 bytes).
pub const PROTECTED_SIZE: usize = MAX_DATAGRAM + 32;
const _: () = assert!(PROTECTED_SIZE >= MAX_RELAY_DATAGRAM);

/// The engine a bridge asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// io_uring; fail if it cannot be used.
    Uring,
    /// epoll with recvmmsg/sendmmsg.
    Mio,
    /// io_uring when usable, otherwise mio.
    Auto,
    /// AF_XDP on `--xdp-iface` beside the `auto` socket engine; the socket engine alone when
    /// the interface cannot be taken over (with the reason). Never picked by `auto`: it takes
    /// over the interface's XDP hook.
    Xdp,
}

impl FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uring" => Ok(Self::Uring),
            "mio" => Ok(Self::Mio),
            "auto" => Ok(Self::Auto),
            "xdp" => Ok(Self::Xdp),
            _ => Err(format!("engine must be uring, mio, auto or xdp, not {s:?}")),
        }
    }
}

/// The engine that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// io_uring.
    Uring,
    /// epoll (mio).
    Mio,
    /// AF_XDP workers on an interface, and io_uring or epoll workers on the media socket.
    Xdp,
}

impl Kind {
    /// "uring", "mio" or "xdp".
    pub fn name(self) -> &'static str {
        match self {
            Self::Uring => "uring",
            Self::Mio => "mio",
            Self::Xdp => "xdp",
        }
    }
}

/// Running workers: which engine, why, and their links.
pub struct Started {
    /// The engine that runs.
    pub kind: Kind,
    /// Why this engine (for the log).
    pub why: String,
    /// Whether workers are pinned, and why (for the log).
    pub pinning: String,
    /// The bound media address (the real port when asked for port 0).
    pub media: SocketAddr,
    /// One link per worker.
    pub links: Vec<WorkerLink>,
    /// A socket bound to the media port for what the bridge sends outside the packet path (the
    /// WebRTC transport's answers and DTLS flights): the transport's own socket when the slow
    /// path is steered ([`Started::slow`]), otherwise a duplicate of a worker's, only sent on.
    pub sender: Socket,
    /// The socket the kernel steers STUN and DTLS to ([`steer`]), for the transport to receive
    /// on; `None` when steering is unavailable and the workers hand them over.
    pub slow: Option<Socket>,
    /// How the slow path reaches the transport (for the log).
    pub steering: String,
}

/// Engine tuning that rarely needs changing.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// In-flight sends per io_uring worker; when all are in flight the worker waits for
    /// completions before queuing more.
    pub uring_send_slots: usize,
    /// Provided receive buffers per io_uring worker (a power of two).
    pub uring_buffers: u16,
    /// Whether to pin worker `k` to the `k`-th core this process may use.
    pub pin: pin::Pin,
    /// How io_uring workers send each copy.
    pub uring_send: uring::SendPath,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            uring_send_slots: uring::SEND_SLOTS,
            uring_buffers: uring::BUFFERS,
            pin: pin::Pin::Auto,
            uring_send: uring::SendPath::default(),
        }
    }
}

/// Resolves `choice`, binds `workers` reuseport sockets on `media` and starts one worker each;
/// with [`Choice::Xdp`] also one AF_XDP worker per RX queue of `xdp_iface`.
pub fn start(
    choice: Choice,
    media: SocketAddr,
    workers: usize,
    tuning: Tuning,
    xdp_iface: Option<&str>,
    channels: &Channels,
) -> anyhow::Result<Started> {
    let (mut kind, mut why) = match choice {
        Choice::Mio => (Kind::Mio, "requested with --engine mio".to_string()),
        Choice::Uring => {
            uring::probe()
                .map_err(|e| anyhow::anyhow!("--engine uring: io_uring unusable: {e}"))?;
            (Kind::Uring, "requested with --engine uring".to_string())
        }
        Choice::Auto | Choice::Xdp => match uring::probe() {
            Ok(()) => (
                Kind::Uring,
                "auto: io_uring with provided buffer rings is available".to_string(),
            ),
            Err(e) => (
                Kind::Mio,
                format!("auto: io_uring unusable ({e}); falling back to epoll"),
            ),
        },
    };
    let workers = workers.max(1);
    claim(media)?;
    let mut sockets = Vec::with_capacity(workers);
    let mut bound = media;
    for _ in 0..workers {
        let s = reuseport_socket(bound)?;
        bound = s.local_addr()?.as_socket().expect("inet socket");
        sockets.push(s);
    }
    let (slow, steering) = match steer::attach(&sockets[0], bound, workers as u16) {
        // Bound after the program is in place: until then the program's index for the slow
        // path is past the group's end and the kernel hashes over the workers.
        Ok(()) => (
            Some(reuseport_socket(bound)?),
            "STUN and DTLS steered to the transport's socket in the kernel (reuseport cBPF)"
                .to_string(),
        ),
        Err(e) => (
            None,
            format!("reuseport cBPF unavailable ({e}): workers hand STUN and DTLS over"),
        ),
    };
    let sender = match &slow {
        Some(s) => s.try_clone()?,
        None => sockets[0].try_clone()?,
    };
    let allowed = core_affinity::get_core_ids().unwrap_or_default();
    let (pinned, pin_why) = pin::decide(tuning.pin, workers, allowed.len(), pin::online_cpus());
    tracing::info!("{pin_why}");
    let cores = if pinned { allowed } else { Vec::new() };
    let mut links = Vec::with_capacity(workers);
    let kernel = sockets[0].try_clone()?;
    for (id, sock) in sockets.into_iter().enumerate() {
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let link = match kind {
            Kind::Uring => uring::spawn(
                id,
                tuning.uring_send_slots,
                tuning.uring_buffers,
                tuning.uring_send,
                sock,
                core,
                channels,
            )?,
            Kind::Mio | Kind::Xdp => mio::spawn(id, sock, core, channels)?,
        };
        links.push(link);
    }
    if choice == Choice::Xdp {
        let iface = xdp_iface.ok_or_else(|| anyhow::anyhow!("--engine xdp needs --xdp-iface"))?;
        let socket_engine = kind.name();
        match xdp::start(iface, bound, &kernel, links.len(), &cores, channels) {
            Ok((more, taken)) => {
                links.extend(more);
                kind = Kind::Xdp;
                why = format!(
                    "--engine xdp: {taken}; what the kernel still receives on the media port: \
                     {socket_engine} ({why})"
                );
            }
            Err(reason) => {
                why = format!("--engine xdp: {reason}; falling back to {socket_engine} ({why})");
                tracing::warn!("{why}");
            }
        }
    }
    Ok(Started {
        kind,
        why,
        pinning: pin_why,
        media: bound,
        links,
        sender,
        slow,
        steering,
    })
}

/// How long a bridge waits for its media port to be free at start (a killed predecessor's
/// io_uring sockets are released by the kernel shortly after the process is gone).
pub const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Makes sure no other socket holds `media` (port 0: nothing to check) before the workers'
/// `SO_REUSEPORT` sockets bind it: otherwise they would join another process's reuseport group
/// (a second bridge started on the same port, or the sockets of a killed bridge's io_uring
/// instance, which the kernel closes a moment after the process) and the kernel would hash some
/// flows to sockets nobody reads. Waits up to [`CLAIM_WAIT`] for the port to be free.
fn claim(media: SocketAddr) -> anyhow::Result<()> {
    if media.port() == 0 {
        return Ok(());
    }
    let until = std::time::Instant::now() + CLAIM_WAIT;
    loop {
        let s = Socket::new(Domain::for_address(media), Type::DGRAM, Some(Protocol::UDP))?;
        if media.is_ipv6() {
            s.set_only_v6(true)?;
        }
        match s.bind(&media.into()) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if std::time::Instant::now() >= until {
                    anyhow::bail!(
                        "media address {media} is in use by another socket (another bridge?) \
                         after waiting {CLAIM_WAIT:?}"
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A UDP socket with `SO_REUSEPORT` bound to `addr`, with large buffers. IPv6 sockets are
/// v6-only so `[::]` and `0.0.0.0` can be bound side by side.
pub fn reuseport_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.bind(&addr.into())?;
    Ok(s)
}
