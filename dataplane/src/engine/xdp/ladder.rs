//! Taking over an interface for the AF_XDP engine, best way first, saying why at each step:
//! the program in native mode, then per RX queue an AF_XDP socket in zero-copy mode, else in
//! copy mode. Generic (skb) mode is not tried: it runs after the kernel has built its socket
//! buffer, which is most of what AF_XDP saves; when native mode fails the caller runs the
//! io_uring engine instead, with the reason.

use super::program::{Mode, Program};
use super::xsk::{Config, Copy, Xsk};

/// The interface taken over: the program and one socket per RX queue.
pub struct Attached {
    /// The program, in native mode.
    pub program: Program,
    /// One socket per RX queue, by queue index.
    pub sockets: Vec<Xsk>,
    /// How each socket exchanges frames (the same for all: the driver's).
    pub copy: Copy,
    /// What was tried and taken, for the log.
    pub why: String,
}

/// The RX queues of `iface` (`/sys/class/net/<iface>/queues/rx-*`; 1 when unreadable).
pub fn rx_queues(iface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

/// The index of interface `iface`, if there is one.
pub fn ifindex(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a valid NUL-terminated name, only read.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (i != 0).then_some(i)
}

/// Attaches the program to `iface` (media port `port`) in native mode and binds a socket to
/// each of its RX queues, zero-copy if the driver can, else copying. `Err` says why the
/// interface cannot be taken over (the caller falls back to the socket engines).
pub fn attach(iface: &str, port: u16, cfg: Config) -> Result<Attached, String> {
    let ifindex = ifindex(iface).ok_or_else(|| format!("no interface {iface:?}"))?;
    let mut program = Program::attach(iface, port, Mode::Native)
        .map_err(|e| format!("native XDP on {iface} unavailable: {e:#}"))?;
    let queues = rx_queues(iface);
    let mut tried = Vec::new();
    for copy in [Copy::ZeroCopy, Copy::Copy] {
        let bound: Result<Vec<Xsk>, std::io::Error> = (0..queues)
            .map(|q| Xsk::bind(ifindex, q, cfg, copy))
            .collect();
        match bound {
            Ok(sockets) => {
                for (q, s) in sockets.iter().enumerate() {
                    program
                        .set_socket(q as u32, s)
                        .map_err(|e| format!("registering queue {q}'s socket: {e:#}"))?;
                }
                let mode = match copy {
                    Copy::ZeroCopy => "zero-copy",
                    Copy::Copy => "copy",
                };
                tried.push(format!("{mode}: taken"));
                return Ok(Attached {
                    program,
                    sockets,
                    copy,
                    why: format!(
                        "native XDP on {iface}, {queues} RX queue(s), AF_XDP {} ({})",
                        mode,
                        tried.join("; ")
                    ),
                });
            }
            Err(e) => tried.push(format!("{copy:?}: {e}")),
        }
    }
    Err(format!(
        "no AF_XDP socket on {iface} ({}): the socket engines serve",
        tried.join("; ")
    ))
}
