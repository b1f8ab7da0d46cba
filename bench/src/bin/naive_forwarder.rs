//! `naive-forwarder`: what a user writes first. One blocking `recv_from`, then one `send_to` per
//! destination. Reads the rig's conference setup (`--setup FILE`); prints `ready media=ADDR`.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;

use clap::Parser;
use ringbridge_bench::groups::Groups;

/// Baseline forwarder: recv_from + send_to per destination.
#[derive(Parser)]
struct Cli {
    /// UDP address to receive on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The rig's setup file (JSON groups of member addresses).
    #[arg(long)]
    setup: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let fanout = Groups::load(&cli.setup)?.fanout();
    let sock = UdpSocket::bind(cli.listen)?;
    println!("ready media={}", sock.local_addr()?);
    let mut buf = [0u8; 2048];
    loop {
        let (n, src) = sock.recv_from(&mut buf)?;
        if let Some(dests) = fanout.get(&src) {
            for d in dests {
                let _ = sock.send_to(&buf[..n], d);
            }
        }
    }
}
