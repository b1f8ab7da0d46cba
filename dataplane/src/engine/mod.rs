//! I/O engines: each runs N worker threads that receive on their own `SO_REUSEPORT` socket, ask
//! their [`Core`](crate::core::Core) for a verdict and send the copies.
//!
//! - [`uring`]: io_uring with multishot `recvmsg` into a provided buffer ring and one `sendmsg`
//!   SQE per copy, all pointing at the received buffer.
//! - [`mio`]: epoll with `recvmmsg`/`sendmmsg` batches; the fallback.
//! - [`xdp`]: AF_XDP (kernel bypass), under construction: its XDP program, sockets and frames.

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
}

impl FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uring" => Ok(Self::Uring),
            "mio" => Ok(Self::Mio),
            "auto" => Ok(Self::Auto),
            _ => Err(format!("engine must be uring, mio or auto, not {s:?}")),
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
}

impl Kind {
    /// "uring" or "mio".
    pub fn name(self) -> &'static str {
        match self {
            Self::Uring => "uring",
            Self::Mio => "mio",
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

/// Resolves `choice`, binds `workers` reuseport sockets on `media` and starts one worker each.
pub fn start(
    choice: Choice,
    media: SocketAddr,
    workers: usize,
    tuning: Tuning,
    channels: &Channels,
) -> anyhow::Result<Started> {
    let (kind, why) = match choice {
        Choice::Mio => (Kind::Mio, "requested with --engine mio".to_string()),
        Choice::Uring => {
            uring::probe()
                .map_err(|e| anyhow::anyhow!("--engine uring: io_uring unusable: {e}"))?;
            (Kind::Uring, "requested with --engine uring".to_string())
        }
        Choice::Auto => match uring::probe() {
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
            Kind::Mio => mio::spawn(id, sock, core, channels)?,
        };
        links.push(link);
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
