// ringbridge's XDP program in C: the same program as redirect.ll (which is what is compiled and
// committed, with `llc`, so that no clang is needed). With clang:
//   clang -O2 -target bpf -c redirect.c -o redirect-clang.o
// UDP over IPv4 or IPv6 to the media port goes to the AF_XDP socket of the packet's RX queue
// (without a socket there, to the kernel); everything else to the kernel: other protocols and
// ports, ARP, IPv4 with options or fragmented, IPv6 with extension headers.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

#define SEC(name) __attribute__((section(name), used))

struct bpf_map_def {
	unsigned int type, key_size, value_size, max_entries, map_flags;
};

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)51;

// RX queue index -> AF_XDP socket.
struct bpf_map_def SEC("maps") xsks = {BPF_MAP_TYPE_XSKMAP, 4, 4, 64, 0};
// [0]: the media port, network byte order.
struct bpf_map_def SEC("maps") port = {BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0};

SEC("xdp") int redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u16 *dport;
	if (data + sizeof(*eth) + sizeof(struct iphdr) + sizeof(struct udphdr) > end)
		return XDP_PASS;
	if (eth->h_proto == __constant_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if (*(__u8 *)ip != 0x45 || (ip->frag_off & __constant_htons(0x3fff)) ||
		    ip->protocol != IPPROTO_UDP)
			return XDP_PASS;
		dport = &((struct udphdr *)(ip + 1))->dest;
	} else if (eth->h_proto == __constant_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) + sizeof(struct udphdr) > end || ip6->nexthdr != IPPROTO_UDP)
			return XDP_PASS;
		dport = &((struct udphdr *)(ip6 + 1))->dest;
	} else {
		return XDP_PASS;
	}
	__u32 key = 0;
	__u32 *p = bpf_map_lookup_elem(&port, &key);
	if (!p || *dport != (__u16)*p)
		return XDP_PASS;
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "GPL";
