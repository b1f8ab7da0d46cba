//! The AF_XDP engine (kernel bypass), under construction. So far: its XDP program, which sends
//! UDP to the media port to the AF_XDP socket of the packet's RX queue and everything else to
//! the kernel, loaded and attached through a bpf_link ([`program`]). Next: the UMEM and rings,
//! the workers driving the same sans-IO core as the other engines, and destinations resolved
//! from the kernel's neighbour table.

pub mod program;
pub mod xsk;
