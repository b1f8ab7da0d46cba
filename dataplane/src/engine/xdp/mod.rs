//! The AF_XDP engine (kernel bypass): the media port's datagrams arriving on one interface are
//! taken off its receive path by an XDP program and handed to an AF_XDP socket per RX queue,
//! whose worker drives the same sans-IO core as the socket engines and writes each copy as a
//! whole frame into the socket's tx ring. The media socket stays: what the program passes to
//! the kernel (other interfaces, fragments, IP options, a queue without a socket) is served by
//! the socket engine's workers, and copies to destinations the interface cannot reach directly
//! go through it.
//!
//! - [`program`]: the XDP program, loaded and attached through a bpf_link;
//! - [`xsk`]: an AF_XDP socket with its UMEM and rings;
//! - [`frame`]: reading received frames, writing frames from per-destination header templates;
//! - [`netlink`]: routes and neighbours from the kernel, and its change notifications;
//! - [`resolver`]: each destination's way (direct or through the kernel), kept up to date;
//! - [`ladder`]: taking an interface over, best way first, with the reasons;
//! - [`worker`]: the workers.

pub mod frame;
pub mod ladder;
pub mod netlink;
pub mod program;
pub mod resolver;
pub mod worker;
pub mod xsk;

use std::net::SocketAddr;

use socket2::Socket;

use crate::publish::{Channels, WorkerLink};

/// Takes `iface` over for media port `media` and starts one worker per RX queue, ids from
/// `first_id` (pinned like the socket engine's workers when `cores` is not empty). `kernel` is
/// the media socket, duplicated for each worker's kernel way. `Err` says why not (nothing is
/// left attached); `Ok` also says what was taken.
pub fn start(
    iface: &str,
    media: SocketAddr,
    kernel: &Socket,
    first_id: usize,
    cores: &[core_affinity::CoreId],
    channels: &Channels,
) -> Result<(Vec<WorkerLink>, String), String> {
    let attached = ladder::attach(iface, media.port(), xsk::Config::default())?;
    let local = resolver::Local {
        ifindex: ladder::ifindex(iface).ok_or_else(|| format!("no interface {iface:?}"))?,
        mac: resolver::mac_of(iface).map_err(|e| format!("{iface}'s address: {e}"))?,
        media,
    };
    let mtu = resolver::mtu_of(iface).map_err(|e| format!("{iface}'s MTU: {e}"))?;
    let (updates, receivers): (Vec<_>, Vec<_>) = (0..attached.sockets.len())
        .map(|_| crossbeam_channel::unbounded())
        .unzip();
    // The resolver owns the program: the interface is released once every worker has ended.
    let requests = resolver::spawn(local, updates, attached.program)
        .map_err(|e| format!("the route and neighbour tables: {e}"))?;
    let mut parts = Vec::new();
    for (xsk, rx) in attached.sockets.into_iter().zip(receivers) {
        parts.push(worker::Parts {
            xsk,
            kernel: kernel
                .try_clone()
                .map_err(|e| format!("duplicating the media socket: {e}"))?,
            requests: requests.clone(),
            updates: rx,
            mtu,
        });
    }
    drop(requests);
    let mut links = Vec::with_capacity(parts.len());
    for (k, p) in parts.into_iter().enumerate() {
        let id = first_id + k;
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        links
            .push(worker::spawn(id, p, core, channels).map_err(|e| format!("worker {id}: {e:#}"))?);
    }
    Ok((links, attached.why))
}
