//! Which way the AF_XDP workers send to each destination, from the kernel's route and
//! neighbour tables: **direct** (a frame written from a header template into the socket's tx
//! ring) when the route leaves through the taken-over interface and the next hop's link-layer
//! address is known; otherwise the **kernel** way (the media socket, whose send makes the kernel
//! resolve the neighbour), switching over once the neighbour resolves.
//!
//! The decision ([`decide`]) is sans-IO; the [`Resolver`] thread owns the netlink sockets: it
//! answers the workers' requests (a destination seen for the first time), follows neighbour
//! change notifications and looks routes up again every [`ROUTES_EVERY`], telling every worker
//! when a destination's way changes. Workers never wait for it: a destination goes the kernel
//! way until its answer arrives.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::FxHashMap;

use super::frame::Template;
use super::netlink::{self, GROUP_NEIGH, Message, Neighbours, Netlink, Route};

/// How often every destination's route is looked up again (routes change rarely and send no
/// notification we follow; neighbours are followed as they change).
pub const ROUTES_EVERY: Duration = Duration::from_secs(5);

/// How datagrams to one destination leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Way {
    /// Frames written from this template into the AF_XDP socket.
    Direct(Template),
    /// Through the kernel (the media socket).
    Kernel,
}

/// A destination's way, as the resolver tells the workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The destination.
    pub to: SocketAddr,
    /// Its way from now on.
    pub way: Way,
}

/// What the bridge sends from on the taken-over interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    /// The interface's index.
    pub ifindex: u32,
    /// The interface's link-layer address.
    pub mac: [u8; 6],
    /// The media socket's address (an unspecified IP: the route's preferred source).
    pub media: SocketAddr,
}

/// The way to `to` given the kernel's `route` to it (`None`: no route) and its neighbours.
pub fn decide(local: &Local, to: SocketAddr, route: Option<&Route>, neigh: &Neighbours) -> Way {
    let Some(route) = route else {
        return Way::Kernel;
    };
    if route.oif != local.ifindex {
        return Way::Kernel;
    }
    let src = if local.media.ip().is_unspecified() {
        match route.source {
            Some(ip) => ip,
            None => return Way::Kernel,
        }
    } else {
        local.media.ip()
    };
    let Some(mac) = neigh.get(local.ifindex, route.next_hop(to.ip())) else {
        return Way::Kernel;
    };
    match Template::new(local.mac, mac, SocketAddr::new(src, local.media.port()), to) {
        Some(t) => Way::Direct(t),
        None => Way::Kernel,
    }
}

/// One destination the workers asked about.
struct Wanted {
    route: Option<Route>,
    told: Way,
}

/// A worker's line to the resolver: asking wakes it at once; dropping the last one ends it.
#[derive(Clone)]
pub struct Requests {
    tx: Sender<SocketAddr>,
    waker: Arc<Waker>,
}

impl Requests {
    /// Asks about `to` (seen for the first time; the workers send it the kernel way meanwhile).
    pub fn ask(&self, to: SocketAddr) {
        let _ = self.tx.send(to);
        let _ = self.waker.wake();
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        // The resolver looks whether any sender is left.
        let _ = self.waker.wake();
    }
}

const NOTES: Token = Token(0);
const WAKER: Token = Token(1);

/// The resolver thread's state: the tables and what it told the workers.
pub struct Resolver {
    local: Local,
    poll: Poll,
    query: Netlink,
    notes: Netlink,
    neigh: Neighbours,
    wanted: FxHashMap<SocketAddr, Wanted>,
    workers: Vec<Sender<Update>>,
    requests: Receiver<SocketAddr>,
}

impl Resolver {
    /// Opens the netlink sockets and reads the neighbour tables; `workers` get the updates.
    pub fn new(local: Local, workers: Vec<Sender<Update>>) -> std::io::Result<(Self, Requests)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        // Subscribed before the dump, so no change falls between the two.
        let notes = Netlink::open(GROUP_NEIGH)?;
        poll.registry()
            .register(&mut SourceFd(&notes.as_raw_fd()), NOTES, Interest::READABLE)?;
        let mut query = Netlink::open(0)?;
        let mut neigh = Neighbours::default();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            for n in query.neighbours(family)? {
                neigh.apply(&n);
            }
        }
        let (tx, requests) = crossbeam_channel::unbounded();
        Ok((
            Self {
                local,
                poll,
                query,
                notes,
                neigh,
                wanted: FxHashMap::default(),
                workers,
                requests,
            },
            Requests { tx, waker },
        ))
    }

    /// Serves until every [`Requests`] is gone.
    pub fn run(mut self) {
        let mut buf = vec![0u8; 32 * 1024];
        let mut events = Events::with_capacity(4);
        let mut routes_at = Instant::now();
        loop {
            let wait = ROUTES_EVERY.saturating_sub(routes_at.elapsed());
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                tracing::error!("AF_XDP resolver: {e}");
                return;
            }
            loop {
                match self.requests.try_recv() {
                    Ok(to) => {
                        if !self.wanted.contains_key(&to) {
                            let route = self.query.route(to.ip()).ok();
                            self.wanted.insert(
                                to,
                                Wanted {
                                    route,
                                    told: Way::Kernel,
                                },
                            );
                            self.tell(to);
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            let mut changed = Vec::new();
            // Edge-triggered: read every notification waiting.
            while let Ok(n) = self.notes.try_recv(&mut buf) {
                for m in netlink::messages(&buf[..n]) {
                    if let Message::Neighbour(x) = m {
                        self.neigh.apply(&x);
                        changed.push(x.ip);
                    }
                }
            }
            if routes_at.elapsed() >= ROUTES_EVERY {
                routes_at = Instant::now();
                let all: Vec<SocketAddr> = self.wanted.keys().copied().collect();
                for to in all {
                    let route = self.query.route(to.ip()).ok();
                    if let Some(w) = self.wanted.get_mut(&to) {
                        w.route = route;
                    }
                    self.tell(to);
                }
            } else if !changed.is_empty() {
                let hit: Vec<SocketAddr> = self
                    .wanted
                    .iter()
                    .filter(|(to, w)| {
                        w.route
                            .as_ref()
                            .is_some_and(|r| changed.contains(&r.next_hop(to.ip())))
                    })
                    .map(|(to, _)| *to)
                    .collect();
                for to in hit {
                    self.tell(to);
                }
            }
        }
    }

    /// Decides `to`'s way again and tells the workers if it changed.
    fn tell(&mut self, to: SocketAddr) {
        let Some(w) = self.wanted.get_mut(&to) else {
            return;
        };
        let way = decide(&self.local, to, w.route.as_ref(), &self.neigh);
        // Workers start every destination on the kernel way: a first `Kernel` says nothing.
        if way == w.told {
            return;
        }
        w.told = way.clone();
        match &way {
            Way::Direct(_) => tracing::debug!(%to, "AF_XDP: sending directly"),
            Way::Kernel => tracing::debug!(%to, "AF_XDP: sending through the kernel"),
        }
        for wk in &self.workers {
            let _ = wk.send(Update {
                to,
                way: way.clone(),
            });
        }
    }
}

/// Starts the resolver thread; it ends when every [`Requests`] is gone, dropping `keep` (the
/// attached program: the interface is released once the workers are).
pub fn spawn(
    local: Local,
    workers: Vec<Sender<Update>>,
    keep: impl Send + 'static,
) -> std::io::Result<Requests> {
    let (r, requests) = Resolver::new(local, workers)?;
    std::thread::Builder::new()
        .name("xdp-resolver".into())
        .spawn(move || {
            r.run();
            drop(keep);
        })?;
    Ok(requests)
}

/// The link-layer address of `iface` (`/sys/class/net/<iface>/address`).
pub fn mac_of(iface: &str) -> std::io::Result<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = parts
            .next()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| std::io::Error::other(format!("{iface}: bad address {s:?}")))?;
    }
    Ok(mac)
}

/// The MTU of `iface` (`/sys/class/net/<iface>/mtu`).
pub fn mtu_of(iface: &str) -> std::io::Result<usize> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))?;
    s.trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("{iface}: bad mtu {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::xdp::netlink::Neighbour;

    fn local(media: &str) -> Local {
        Local {
            ifindex: 7,
            mac: [2, 0, 0, 0, 0, 1],
            media: media.parse().unwrap(),
        }
    }

    fn route(oif: u32, gateway: Option<&str>, source: Option<&str>) -> Route {
        Route {
            oif,
            gateway: gateway.map(|g| g.parse().unwrap()),
            source: source.map(|s| s.parse().unwrap()),
        }
    }

    fn neighbours(entries: &[(u32, &str, [u8; 6])]) -> Neighbours {
        let mut n = Neighbours::default();
        for &(ifindex, ip, mac) in entries {
            n.apply(&Neighbour {
                ifindex,
                ip: ip.parse().unwrap(),
                mac: Some(mac),
                gone: false,
            });
        }
        n
    }

    const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 3];

    #[test]
    fn an_on_link_destination_with_a_known_neighbour_goes_direct_from_the_routes_source() {
        let l = local("0.0.0.0:4000");
        let to: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let r = route(7, None, Some("10.0.0.1"));
        let n = neighbours(&[(7, "10.0.0.2", PEER_MAC)]);
        let want = Template::new(l.mac, PEER_MAC, "10.0.0.1:4000".parse().unwrap(), to).unwrap();
        assert_eq!(decide(&l, to, Some(&r), &n), Way::Direct(want));
    }

    #[test]
    fn a_bound_media_address_is_the_source_and_a_gateways_mac_the_next_hop() {
        let l = local("10.0.0.1:4000");
        let to: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let r = route(7, Some("10.0.0.254"), Some("10.0.0.99"));
        let n = neighbours(&[(7, "10.0.0.254", GW_MAC), (7, "192.0.2.9", PEER_MAC)]);
        let want = Template::new(l.mac, GW_MAC, "10.0.0.1:4000".parse().unwrap(), to).unwrap();
        assert_eq!(decide(&l, to, Some(&r), &n), Way::Direct(want));
    }

    #[test]
    fn the_kernel_way_without_a_neighbour_a_route_through_the_interface_or_a_source() {
        let l = local("0.0.0.0:4000");
        let to: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let known = neighbours(&[(7, "10.0.0.2", PEER_MAC)]);
        // Not resolved yet (or on another interface).
        let r = route(7, None, Some("10.0.0.1"));
        assert_eq!(
            decide(&l, to, Some(&r), &Neighbours::default()),
            Way::Kernel
        );
        assert_eq!(
            decide(&l, to, Some(&r), &neighbours(&[(8, "10.0.0.2", PEER_MAC)])),
            Way::Kernel
        );
        // Another interface (loopback, a second NIC), no route, no source address.
        assert_eq!(
            decide(&l, to, Some(&route(1, None, Some("10.0.0.1"))), &known),
            Way::Kernel
        );
        assert_eq!(decide(&l, to, None, &known), Way::Kernel);
        assert_eq!(
            decide(&l, to, Some(&route(7, None, None)), &known),
            Way::Kernel
        );
        // A family the media socket does not send from.
        let v6 = local("[::1]:4000");
        assert_eq!(decide(&v6, to, Some(&r), &known), Way::Kernel);
    }

    #[test]
    fn a_neighbour_gone_sends_the_destination_back_the_kernel_way() {
        let l = local("0.0.0.0:4000");
        let to: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let r = route(7, None, Some("10.0.0.1"));
        let mut n = neighbours(&[(7, "10.0.0.2", PEER_MAC)]);
        assert!(matches!(decide(&l, to, Some(&r), &n), Way::Direct(_)));
        n.apply(&Neighbour {
            ifindex: 7,
            ip: "10.0.0.2".parse().unwrap(),
            mac: None,
            gone: true,
        });
        assert_eq!(decide(&l, to, Some(&r), &n), Way::Kernel);
    }
}
