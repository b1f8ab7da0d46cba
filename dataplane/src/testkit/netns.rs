//! A network namespace joined to the host's by a veth pair, for tests that put a real link
//! between the bridge and its peers: losses (an nftables rule: the kernels we run on may lack
//! netem), a rate limit (a `tc` qdisc on the host side), an XDP program on the host side. Needs
//! root and iproute2 (and `nft` for losses: Debian's nftables, which `make test` installs).

use std::net::Ipv4Addr;
use std::process::Command;

/// The namespace and its veth pair: `host` on the host side (`host_if`), `inner` in the
/// namespace (`inner_if`), a /30 of 10.77.0.0/16 picked by process id and slot (names too).
/// Dropping it removes the pair and the namespace, with any rule or qdisc on them.
pub struct Link {
    /// The namespace's name (for `ip netns exec`).
    pub ns: String,
    /// The host side's interface.
    pub host_if: String,
    /// The namespace side's interface.
    pub inner_if: String,
    /// The host side's address.
    pub host: Ipv4Addr,
    /// The namespace side's address.
    pub inner: Ipv4Addr,
}

impl Link {
    /// A fresh namespace and pair; `slot` (0..8) tells apart the links of one process.
    pub fn new(slot: u32) -> Self {
        let idx = (std::process::id() * 8 + slot) % 16_384;
        let (hi, lo) = ((idx / 64) as u8, (idx % 64 * 4) as u8);
        let link = Link {
            ns: format!("rbn{idx}"),
            host_if: format!("rbn{idx}h"),
            inner_if: format!("rbn{idx}n"),
            host: Ipv4Addr::new(10, 77, hi, lo + 1),
            inner: Ipv4Addr::new(10, 77, hi, lo + 2),
        };
        link.remove(); // left by an earlier process with this id, if any
        let (ns, host_if, inner_if) = (&link.ns, &link.host_if, &link.inner_if);
        run("ip", &["netns", "add", ns]);
        run(
            "ip",
            &[
                "link", "add", host_if, "type", "veth", "peer", "name", inner_if,
            ],
        );
        run("ip", &["link", "set", inner_if, "netns", ns]);
        let host_addr = format!("{}/30", link.host);
        run("ip", &["addr", "add", &host_addr, "dev", host_if]);
        run("ip", &["link", "set", host_if, "up"]);
        let inner_addr = format!("{}/30", link.inner);
        run(
            "ip",
            &["-n", ns, "addr", "add", &inner_addr, "dev", inner_if],
        );
        run("ip", &["-n", ns, "link", "set", inner_if, "up"]);
        // Loopback too: a browser's driver listens there.
        run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        link
    }

    /// Drops `percent` % of the UDP packets from the host side at random, in the namespace
    /// (an nftables rule with a counter: [`Link::dropped`]).
    pub fn lose(&self, percent: u32) {
        let rules = format!(
            "add table ip loss; \
             add chain ip loss input {{ type filter hook input priority 0; policy accept; }}; \
             add rule ip loss input ip saddr {} meta l4proto udp \
             numgen random mod 100 < {percent} counter drop",
            self.host
        );
        run("ip", &["netns", "exec", &self.ns, "nft", &rules]);
    }

    /// Packets the [`Link::lose`] rule dropped so far.
    pub fn dropped(&self) -> u64 {
        let out = run(
            "ip",
            &[
                "netns", "exec", &self.ns, "nft", "list", "chain", "ip", "loss", "input",
            ],
        );
        let n = out
            .split_once("counter packets ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok());
        n.unwrap_or_else(|| panic!("no counter in {out}"))
    }

    /// The host side's interface index.
    pub fn ifindex(&self) -> u32 {
        let path = format!("/sys/class/net/{}/ifindex", self.host_if);
        let s = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        s.trim().parse().unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The XDP program the host side has, as `ip` shows it (`None`: none).
    pub fn xdp(&self) -> Option<String> {
        let out = run("ip", &["-d", "link", "show", "dev", &self.host_if]);
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with("prog/xdp"))
            .map(String::from)
    }

    /// A UDP socket in the namespace bound to `addr` (port 0: any), made by a thread that
    /// enters the namespace for the call: the socket stays there, usable from any thread of
    /// this process.
    pub fn udp(&self, addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
        udp_in(&self.ns, addr)
    }

    /// Makes the namespace side receive in a kernel thread of its own (threaded NAPI, enabled
    /// on a veth by an XDP program: ours, passing everything), so what a sender on the host
    /// side delivers into the namespace (IP, UDP, the sockets' queues) is not done in that
    /// sender's context. The program stays attached as long as the returned value lives.
    pub fn thread_receive(&self) -> anyhow::Result<crate::engine::xdp::program::Program> {
        use crate::engine::xdp::program::{Mode, Program};
        let ns = std::fs::File::open(format!("/var/run/netns/{}", self.ns))?;
        let program = std::thread::scope(|s| {
            s.spawn(|| {
                use std::os::fd::AsFd;
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                // Port 0: no datagram is taken, all pass.
                Program::attach(&self.inner_if, 0, Mode::Native)
            })
            .join()
            .expect("the namespace thread")
        })?;
        self.threaded(true)?;
        Ok(program)
    }

    /// Whether the namespace side's NAPI (see [`Link::thread_receive`]) runs in a kernel
    /// thread of its own (`true`) or in the softirq context of whoever sends to it.
    pub fn threaded(&self, on: bool) -> anyhow::Result<()> {
        let script = format!(
            "echo {} > /sys/class/net/{}/threaded",
            u8::from(on),
            self.inner_if
        );
        anyhow::ensure!(
            self.inside(&script),
            "{}: threaded NAPI refused",
            self.inner_if
        );
        Ok(())
    }

    /// Runs `script` (bash) in the namespace, within 5 s; whether it succeeded.
    pub fn inside(&self, script: &str) -> bool {
        Command::new("timeout")
            .args(["5", "ip", "netns", "exec", &self.ns, "bash", "-c", script])
            .status()
            .is_ok_and(|s| s.success())
    }

    fn remove(&self) {
        for args in [
            ["link", "del", self.host_if.as_str()],
            ["netns", "del", self.ns.as_str()],
        ] {
            let _ = Command::new("ip").args(args).output();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A UDP socket bound to `addr` in network namespace `ns` (as `ip netns` names it), made by a
/// thread that enters the namespace for the call: the socket stays there, usable from any
/// thread of this process.
pub fn udp_in(ns: &str, addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let ns = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsFd;
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            std::net::UdpSocket::bind(addr)
        })
        .join()
        .expect("the namespace thread")
    })
}

/// Runs `program` with `args`: its stdout, or a panic with its stderr.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program}: {e} (the test needs iproute2, and nft: Debian's nftables)")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {} (the test needs root)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
