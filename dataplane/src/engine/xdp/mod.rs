//! The AF_XDP engine (kernel bypass), under construction. So far: its XDP program, which sends
//! UDP to the media port to the AF_XDP socket of the packet's RX queue and everything else to
//! the kernel, loaded and attached through a bpf_link ([`program`]); an AF_XDP socket with its
//! UMEM and rings ([`xsk`]); reading received frames and writing frames to a destination from a
//! header template ([`frame`]); routes and neighbours from the kernel over rtnetlink, following
//! its change notifications ([`netlink`]); taking an interface over best way first, native XDP
//! then zero-copy or copy sockets, with the reasons ([`ladder`]). Next: the workers driving the same sans-IO core as
//! the other engines (a destination without a resolved neighbour going the socket way),
//! `--engine xdp` falling back to the socket engines on the ladder's refusal, and the veth
//! topology in `make perf`.

pub mod frame;
pub mod ladder;
pub mod netlink;
pub mod program;
pub mod xsk;
