//! The XDP program of the AF_XDP engine against the kernel: its verifier loads it, it attaches
//! to a veth (native and generic), ARP, ping and other ports keep working while it is
//! attached, UDP to the media port reaches the kernel's socket while no AF_XDP socket is
//! registered, and it is gone from the interface once dropped. And the committed object is what
//! `llc` makes of the committed source, where `llc` is installed. With an AF_XDP socket
//! registered for the queue, the media port's datagrams reach it (and not the kernel's
//! socket), and what it sends back reaches the peer.
//!
//! Needs root (a network namespace and a veth pair of its own, named per process, removed on
//! drop) and iproute2; every wait is bounded.

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use ringbridge_dataplane::engine::xdp::frame::{self, Template};
use ringbridge_dataplane::engine::xdp::netlink::{self, Message, Neighbours, Netlink};
use ringbridge_dataplane::engine::xdp::program::{self, Mode, Program};
use ringbridge_dataplane::engine::xdp::xsk::{Config, Copy, Xsk};
use ringbridge_dataplane::testkit::netns::{Link, run};

#[test]
fn the_program_passes_the_verifier_and_everything_but_the_media_port_goes_on() {
    let v = Link::new(0);
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

#[test]
fn an_af_xdp_socket_gets_the_media_port_and_what_it_sends_reaches_the_peer() {
    let v = Link::new(1);
    let media = UdpSocket::bind((v.host, 0)).unwrap();
    let other = UdpSocket::bind((v.host, 0)).unwrap();
    media
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let port = media.local_addr().unwrap().port();
    let mut p = Program::attach(&v.host_if, port, Mode::Native).unwrap();
    let mut xsk = Xsk::bind(v.ifindex(), 0, Config::default(), Copy::Copy).unwrap();
    p.set_socket(0, &xsk).unwrap();
    // A peer in the namespace sends to the media port and waits for an answer.
    let python = std::env::var("RINGBRIDGE_PYTHON").unwrap_or_else(|_| "python3".into());
    let peer = Command::new("timeout")
        .args(["8", "ip", "netns", "exec", &v.ns, &python, "-c"])
        .arg(format!(
            "import socket\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.settimeout(5)\n\
             s.sendto(b'media', ('{}', {port}))\n\
             print(s.recv(100).decode())",
            v.host
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 in the namespace");
    // The AF_XDP socket gets the datagram, whole: Ethernet, IPv4, UDP.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let mut got = None;
    while got.is_none() && std::time::Instant::now() < until {
        xsk.recv(|f| {
            if let Some(d) = frame::parse(f)
                && f[d.payload.clone()] == *b"media"
            {
                got = Some((f.to_vec(), d));
            }
        });
        std::thread::sleep(Duration::from_millis(5));
    }
    let (f, d) = got.expect("the media datagram never reached the AF_XDP socket");
    assert_eq!(d.dst, media.local_addr().unwrap());
    assert_ne!(d.src.ip(), v.host);
    // ...and the kernel's socket on the port does not.
    let mut buf = [0u8; 64];
    assert!(media.recv_from(&mut buf).is_err(), "the kernel got it too");
    // A reply from a header template (our MAC and address to the peer's) sent through the
    // AF_XDP socket reaches the peer: the kernel there takes its headers and checksum.
    let (ours, theirs) = (f[0..6].try_into().unwrap(), f[6..12].try_into().unwrap());
    let t = Template::new(ours, theirs, d.dst, d.src).unwrap();
    let mut out = vec![0u8; t.header_len() + 4];
    out[t.header_len()..].copy_from_slice(b"echo");
    let n = t.write(&mut out, 4, 1).unwrap();
    assert!(xsk.send(&out[..n]));
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while xsk.flush().unwrap() == 0 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = peer.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "echo");
    // Another port still goes to the kernel.
    let to = other.local_addr().unwrap().port();
    assert!(v.inside(&format!("echo other > /dev/udp/{}/{to}", v.host)));
    let (n, _) = other.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"other\n");
}

#[test]
fn routes_and_neighbours_come_from_the_kernel_and_follow_its_changes() {
    let v = Link::new(2);
    let ifindex = v.ifindex();
    let mut nl = Netlink::open(0).unwrap();
    // On-link: out of the veth, no gateway, from its address.
    let r = nl.route(v.inner.into()).unwrap();
    assert_eq!(
        (r.oif, r.gateway, r.source),
        (ifindex, None, Some(v.host.into()))
    );
    // Behind the peer: its address is the next hop.
    let net = format!("10.79.{}.0/24", v.host.octets()[2]);
    run("ip", &["route", "add", &net, "via", &v.inner.to_string()]);
    let far = Ipv4Addr::new(10, 79, v.host.octets()[2], 5);
    let r = nl.route(far.into()).unwrap();
    assert_eq!(r.gateway, Some(v.inner.into()));
    assert_eq!(r.next_hop(far.into()), v.inner);
    run("ip", &["route", "del", &net]);
    // The peer's link-layer address, once the kernel resolved it.
    let mac_line = run("ip", &["-n", &v.ns, "link", "show", "dev", &v.inner_if]);
    let mac: [u8; 6] = mac_line
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(|m| {
            let b: Vec<u8> = m
                .split(':')
                .map(|x| u8::from_str_radix(x, 16).unwrap())
                .collect();
            b.try_into().unwrap()
        })
        .unwrap_or_else(|| panic!("no MAC in {mac_line}"));
    let dump = |nl: &mut Netlink| {
        let mut t = Neighbours::default();
        for n in nl.neighbours(libc::AF_INET as u8).unwrap() {
            t.apply(&n);
        }
        t
    };
    assert_eq!(dump(&mut nl).get(ifindex, v.inner.into()), None);
    let ping = format!("ping -q -c 1 -W 2 {} > /dev/null", v.inner);
    let ping = || {
        let ok = Command::new("bash").args(["-c", &ping]).status();
        assert!(ok.unwrap().success(), "{ping}");
    };
    ping();
    let mut t = dump(&mut nl);
    assert_eq!(t.get(ifindex, v.inner.into()), Some(mac));
    // Changes arrive as notifications: deleted, then resolved again.
    let watch = Netlink::open(netlink::GROUP_NEIGH).unwrap();
    let follow = |t: &mut Neighbours, want: Option<[u8; 6]>| {
        let mut buf = vec![0u8; 16 * 1024];
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while t.get(ifindex, v.inner.into()) != want {
            assert!(
                std::time::Instant::now() < until,
                "no notification for {want:?}"
            );
            let Ok(n) = watch.recv(&mut buf) else {
                continue;
            };
            for m in netlink::messages(&buf[..n]) {
                if let Message::Neighbour(x) = m {
                    t.apply(&x);
                }
            }
        }
    };
    run(
        "ip",
        &["neigh", "del", &v.inner.to_string(), "dev", &v.host_if],
    );
    follow(&mut t, None);
    ping();
    follow(&mut t, Some(mac));
}

/// Run by [`a_killed_process_leaves_nothing_attached`] in a child process (this test binary
/// again): attaches the program to the interface named by `RB_XDP_IFACE`, says so, and waits to
/// be killed. Does nothing in a normal run.
#[test]
fn child_attaches_and_waits() {
    let Ok(iface) = std::env::var("RB_XDP_IFACE") else {
        return;
    };
    let _p = Program::attach(&iface, 5004, Mode::Native).unwrap();
    println!("attached");
    std::thread::sleep(Duration::from_secs(30));
}

/// The program is attached through a bpf_link, a descriptor of the process: SIGKILLed, the
/// process leaves nothing on the interface.
#[test]
fn a_killed_process_leaves_nothing_attached() {
    use std::io::{BufRead, BufReader};
    let v = Link::new(3);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_attaches_and_waits", "--nocapture"])
        .env("RB_XDP_IFACE", &v.host_if)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let attached = lines.any(|l| l.is_ok_and(|l| l.contains("attached")));
    assert!(attached, "the child never attached");
    assert!(v.xdp().is_some(), "attached by the child");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while v.xdp().is_some() {
        assert!(
            std::time::Instant::now() < until,
            "still attached after the process was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Taking over an interface, best way first: on a veth, native XDP and, since veth has no
/// zero-copy, AF_XDP in copy mode, saying so; an interface without native XDP (a bridge) or
/// without a name is refused with the reason (the socket engines then serve).
#[test]
fn the_ladder_takes_what_the_driver_offers_and_says_why_not_otherwise() {
    use ringbridge_dataplane::engine::xdp::ladder;
    let v = Link::new(4);
    let cfg = Config {
        frames: 1024,
        ring: 512,
    };
    let a = ladder::attach(&v.host_if, 5004, cfg).unwrap();
    assert_eq!(a.copy, Copy::Copy, "{}", a.why);
    assert_eq!(a.sockets.len(), ladder::rx_queues(&v.host_if) as usize);
    assert!(
        a.why.contains("copy: taken") && a.why.contains("ZeroCopy"),
        "{}",
        a.why
    );
    assert!(v.xdp().is_some());
    drop(a);
    assert_eq!(v.xdp(), None);
    // No native XDP: refused, and nothing is left attached.
    let bridge_if = format!("{}d", v.host_if);
    run("ip", &["link", "add", &bridge_if, "type", "bridge"]);
    let e = ladder::attach(&bridge_if, 5004, cfg).err();
    let shown = run("ip", &["-d", "link", "show", "dev", &bridge_if]);
    run("ip", &["link", "del", &bridge_if]);
    let e = e.expect("a bridge interface has no native XDP");
    assert!(e.contains("native XDP") && e.contains(&bridge_if), "{e}");
    assert!(!shown.contains("prog/xdp"), "{shown}");
    let e = ladder::attach("rb-no-such-if", 5004, cfg).err().unwrap();
    assert!(e.contains("no interface"), "{e}");
}
