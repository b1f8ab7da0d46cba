//! The XDP program: `dataplane/xdp/redirect.ll` (LLVM IR; `redirect.c` is the same program in
//! C), compiled with `llc` into the committed `redirect.o`, which is embedded here, so neither
//! users nor CI need clang (`make xdp` rebuilds it; a test compares the two where `llc` is
//! installed). UDP over IPv4 or IPv6 to the media port goes to the AF_XDP socket registered
//! for the packet's RX queue (without one, to the kernel); everything else goes to the kernel:
//! other ports and protocols, ARP, IPv4 with options or fragmented, IPv6 with extension
//! headers.
//!
//! Loaded and attached with aya through a bpf_link: the link is a file descriptor of this
//! process, so however the process ends (SIGKILL included) the kernel detaches the program.

use std::os::fd::AsRawFd;

use anyhow::{Context, anyhow};
use aya::Ebpf;
use aya::maps::{Array, XskMap};
use aya::programs::{Xdp, XdpFlags};

/// An object file embedded 8-byte aligned (aya's ELF parser reads the header in place).
#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!("../../../xdp/redirect.o"));

/// The compiled program as committed (an ELF object for BPF, little-endian).
pub fn object() -> &'static [u8] {
    &OBJECT.0
}

/// How the program runs on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In the driver, before the kernel allocates anything (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// In the kernel's generic receive path (`XDP_FLAGS_SKB_MODE`): works on every interface,
    /// gains little.
    Generic,
}

impl Mode {
    fn flags(self) -> XdpFlags {
        match self {
            Mode::Native => XdpFlags::DRV_MODE,
            Mode::Generic => XdpFlags::SKB_MODE,
        }
    }

    /// `native` or `generic`, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
        }
    }
}

/// The program attached to one interface; detached when dropped (or when the process ends).
pub struct Program {
    ebpf: Ebpf,
    /// The interface it is attached to.
    pub iface: String,
    /// How.
    pub mode: Mode,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("iface", &self.iface)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Program {
    /// Loads the program (the kernel's verifier checks it), tells it the media `port` and
    /// attaches it to `iface` in `mode`.
    pub fn attach(iface: &str, port: u16, mode: Mode) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(object()).context("loading the XDP object")?;
        let mut ports: Array<_, u32> = Array::try_from(
            ebpf.map_mut("port")
                .ok_or_else(|| anyhow!("the XDP object has no `port` map"))?,
        )?;
        // The program compares the port's two bytes as they are on the wire with the low two
        // bytes of entry 0, both read little-endian.
        ports
            .set(0, u32::from(port.to_be()), 0)
            .context("setting the XDP program's port")?;
        let prog: &mut Xdp = ebpf
            .program_mut("redirect")
            .ok_or_else(|| anyhow!("the XDP object has no `redirect` program"))?
            .try_into()?;
        prog.load().context("loading the XDP program (verifier)")?;
        prog.attach(iface, mode.flags())
            .with_context(|| format!("attaching XDP to {iface} in {} mode", mode.name()))?;
        Ok(Self {
            ebpf,
            iface: iface.into(),
            mode,
        })
    }

    /// Sends the media port's packets of RX queue `queue` to AF_XDP socket `socket`.
    pub fn set_socket(&mut self, queue: u32, socket: &impl AsRawFd) -> anyhow::Result<()> {
        let mut xsks = XskMap::try_from(
            self.ebpf
                .map_mut("xsks")
                .ok_or_else(|| anyhow!("the XDP object has no `xsks` map"))?,
        )?;
        xsks.set(queue, socket.as_raw_fd(), 0)
            .with_context(|| format!("registering the AF_XDP socket of queue {queue}"))
    }
}
