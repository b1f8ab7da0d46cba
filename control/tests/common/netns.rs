//! A network namespace joined to the host's by a veth pair, for tests that put a real link
//! between a bridge and a client: losses (an nftables rule: the kernels we run on may lack
//! netem) or a rate limit (a `tbf` qdisc). Needs root, iproute2 and, for losses, `nft`
//! (Debian's nftables, which `make test` installs).

use std::net::Ipv4Addr;
use std::process::Command;

/// The namespace and its veth pair: the host side has `host`, the namespace's side `inner` (a
/// /30 of 10.77.0.0/16 picked by process id and `slot`, names too). Dropping it removes the
/// pair and the namespace (with any rule or qdisc on them).
pub struct Link {
    /// The namespace's name (for `ip netns exec`).
    pub ns: String,
    /// The host side's interface (where a qdisc shapes what goes towards the namespace).
    pub host_if: String,
    /// The host side's address.
    pub host: Ipv4Addr,
    /// The namespace side's address.
    pub inner: Ipv4Addr,
}

impl Link {
    /// A fresh namespace and veth pair; `slot` (0..4) tells apart several links of one process.
    pub fn new(slot: u32) -> Self {
        let idx = (std::process::id() * 4 + slot) % 16_384;
        let (hi, lo) = ((idx / 64) as u8, (idx % 64 * 4) as u8);
        let link = Link {
            ns: format!("rbn{idx}"),
            host_if: format!("rbn{idx}h"),
            host: Ipv4Addr::new(10, 77, hi, lo + 1),
            inner: Ipv4Addr::new(10, 77, hi, lo + 2),
        };
        link.remove(); // left by an earlier process with this id, if any
        let (ns, host_if, ns_if) = (&link.ns, &link.host_if, &format!("rbn{idx}n"));
        run("ip", &["netns", "add", ns]);
        run(
            "ip",
            &[
                "link", "add", host_if, "type", "veth", "peer", "name", ns_if,
            ],
        );
        run("ip", &["link", "set", ns_if, "netns", ns]);
        let host_addr = format!("{}/30", link.host);
        run("ip", &["addr", "add", &host_addr, "dev", host_if]);
        run("ip", &["link", "set", host_if, "up"]);
        let inner_addr = format!("{}/30", link.inner);
        run("ip", &["-n", ns, "addr", "add", &inner_addr, "dev", ns_if]);
        run("ip", &["-n", ns, "link", "set", ns_if, "up"]);
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

/// Runs `program` with `args`: its stdout, or a panic with its stderr.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program}: {e} (the test needs iproute2 and nft: Debian's nftables)")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {} (the test needs root)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
