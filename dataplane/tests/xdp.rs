//! The XDP program of the AF_XDP engine against the kernel: its verifier loads it, it attaches
//! to a veth (native and generic), ARP, ping and other ports keep working while it is
//! attached, UDP to the media port reaches the kernel's socket while no AF_XDP socket is
//! registered, and it is gone from the interface once dropped. And the committed object is what
//! `llc` makes of the committed source, where `llc` is installed.
//!
//! Needs root (a network namespace and a veth pair of its own, named per process, removed on
//! drop) and iproute2; every wait is bounded.

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use ringbridge_dataplane::engine::xdp::program::{self, Mode, Program};

/// A namespace joined to ours by a veth pair: `host` on our side (`host_if`), `inner` in the
/// namespace. Removed on drop.
struct Veth {
    ns: String,
    host_if: String,
    host: Ipv4Addr,
}

impl Veth {
    fn new() -> Self {
        let idx = std::process::id() % 16_384;
        let (hi, lo) = ((idx / 64) as u8, (idx % 64 * 4) as u8);
        let v = Veth {
            ns: format!("rbx{idx}"),
            host_if: format!("rbx{idx}h"),
            host: Ipv4Addr::new(10, 78, hi, lo + 1),
        };
        v.remove();
        let inner_if = format!("rbx{idx}n");
        let inner = format!("10.78.{hi}.{}/30", lo + 2);
        run("ip", &["netns", "add", &v.ns]);
        run(
            "ip",
            &[
                "link", "add", &v.host_if, "type", "veth", "peer", "name", &inner_if,
            ],
        );
        run("ip", &["link", "set", &inner_if, "netns", &v.ns]);
        run(
            "ip",
            &["addr", "add", &format!("{}/30", v.host), "dev", &v.host_if],
        );
        run("ip", &["link", "set", &v.host_if, "up"]);
        run(
            "ip",
            &["-n", &v.ns, "addr", "add", &inner, "dev", &inner_if],
        );
        run("ip", &["-n", &v.ns, "link", "set", &inner_if, "up"]);
        run("ip", &["-n", &v.ns, "link", "set", "lo", "up"]);
        v
    }

    /// The XDP program the interface has, as `ip` shows it (`None`: none).
    fn xdp(&self) -> Option<String> {
        let out = run("ip", &["-d", "link", "show", "dev", &self.host_if]);
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with("prog/xdp"))
            .map(String::from)
    }

    /// Runs `script` (bash) in the namespace; whether it succeeded.
    fn inside(&self, script: &str) -> bool {
        Command::new("timeout")
            .args(["5", "ip", "netns", "exec", &self.ns, "bash", "-c", script])
            .status()
            .is_ok_and(|s| s.success())
    }

    fn remove(&self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        self.remove();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (the test needs iproute2)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {} (the test needs root)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_program_passes_the_verifier_and_everything_but_the_media_port_goes_on() {
    let v = Veth::new();
    // The media port's socket and another port's: with no AF_XDP socket registered, both get
    // their datagrams from the kernel.
    let media = UdpSocket::bind((v.host, 0)).unwrap();
    let other = UdpSocket::bind((v.host, 0)).unwrap();
    for s in [&media, &other] {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    }
    let port = media.local_addr().unwrap().port();
    assert_eq!(v.xdp(), None);
    for mode in [Mode::Native, Mode::Generic] {
        let p = Program::attach(&v.host_if, port, mode)
            .unwrap_or_else(|e| panic!("{} mode: {e:#}", mode.name()));
        let shown = v
            .xdp()
            .unwrap_or_else(|| panic!("{}: not attached", mode.name()));
        assert!(shown.contains("id"), "{shown}");
        // ARP and ICMP pass (a fresh neighbour each mode: the namespace forgets it).
        assert!(v.inside("ip neigh flush all"));
        assert!(
            v.inside(&format!("ping -q -c 1 -W 2 {} > /dev/null", v.host)),
            "{}: ping",
            mode.name()
        );
        for (s, what) in [(&media, "media"), (&other, "other")] {
            let to = s.local_addr().unwrap().port();
            assert!(v.inside(&format!("echo {what} > /dev/udp/{}/{to}", v.host)));
            let mut buf = [0u8; 64];
            let (n, _) = s
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("{} mode, {what} port: {e}", mode.name()));
            assert_eq!(&buf[..n], format!("{what}\n").as_bytes());
        }
        drop(p);
        assert_eq!(v.xdp(), None, "{}: still attached after drop", mode.name());
    }
}

/// The committed object is what `llc` makes of the committed source (where `llc` is installed:
/// users and CI need neither `llc` nor clang).
#[test]
fn the_committed_object_is_built_from_the_committed_source() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/xdp/redirect.ll");
    let out = std::env::temp_dir().join(format!("ringbridge-xdp-{}.o", std::process::id()));
    let built = Command::new("llc")
        .args([
            "-march=bpfel",
            "-mcpu=v2",
            "-O2",
            "-filetype=obj",
            src,
            "-o",
        ])
        .arg(&out)
        .status();
    match built {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("llc is not installed: the committed object is not compared");
        }
        Err(e) => panic!("llc: {e}"),
        Ok(s) => {
            assert!(s.success(), "llc failed on {src}");
            let rebuilt = std::fs::read(&out).unwrap();
            let _ = std::fs::remove_file(&out);
            assert!(
                rebuilt == program::object(),
                "dataplane/xdp/redirect.o is stale: run `make xdp`"
            );
        }
    }
}
