; ringbridge's XDP program, in LLVM IR (compiled with `llc`, no clang needed; redirect.c is the
; same program in C). UDP over IPv4 or IPv6 to the media port (ARRAY map `port`, entry 0, the
; port in network byte order) goes to the AF_XDP socket of the packet's RX queue (XSKMAP `xsks`;
; without a socket there, to the kernel). Everything else goes to the kernel (XDP_PASS):
; other protocols and ports, ARP, IPv4 with options or fragmented, IPv6 with extension headers.
target datalayout = "e-m:e-p:64:64-i64:64-i128:128-n32:64-S128"
target triple = "bpfel"

%struct.bpf_map_def = type { i32, i32, i32, i32, i32 }
%struct.xdp_md = type { i32, i32, i32, i32, i32, i32 }

; BPF_MAP_TYPE_XSKMAP (17), u32 -> u32, 64 queues.
@xsks = dso_local global %struct.bpf_map_def { i32 17, i32 4, i32 4, i32 64, i32 0 }, section "maps", align 4
; BPF_MAP_TYPE_ARRAY (2), u32 -> u32, one entry.
@port = dso_local global %struct.bpf_map_def { i32 2, i32 4, i32 4, i32 1, i32 0 }, section "maps", align 4
@_license = dso_local global [4 x i8] c"GPL\00", section "license", align 1
@llvm.compiler.used = appending global [4 x i8*] [i8* bitcast (%struct.bpf_map_def* @xsks to i8*), i8* bitcast (%struct.bpf_map_def* @port to i8*), i8* getelementptr inbounds ([4 x i8], [4 x i8]* @_license, i32 0, i32 0), i8* bitcast (i32 (%struct.xdp_md*)* @redirect to i8*)], section "llvm.metadata"

define dso_local i32 @redirect(%struct.xdp_md* %ctx) #0 section "xdp" {
entry:
  %key = alloca i32, align 4
  %pdata = getelementptr inbounds %struct.xdp_md, %struct.xdp_md* %ctx, i64 0, i32 0
  %data32 = load i32, i32* %pdata, align 4
  %pend = getelementptr inbounds %struct.xdp_md, %struct.xdp_md* %ctx, i64 0, i32 1
  %end32 = load i32, i32* %pend, align 4
  %data = inttoptr i32 %data32 to i8*
  %end = inttoptr i32 %end32 to i8*
  ; Ethernet (14) + IPv4 (20) + UDP (8) = 42 bytes at least.
  %v4_end = getelementptr inbounds i8, i8* %data, i64 42
  %short = icmp ugt i8* %v4_end, %end
  br i1 %short, label %pass, label %eth

eth:
  %pproto = getelementptr inbounds i8, i8* %data, i64 12
  %pproto16 = bitcast i8* %pproto to i16*
  %proto = load i16, i16* %pproto16, align 1
  ; 0x0800 and 0x86dd in network byte order, read little-endian.
  %is_v4 = icmp eq i16 %proto, 8
  br i1 %is_v4, label %ipv4, label %maybe_v6

ipv4:
  %pvihl = getelementptr inbounds i8, i8* %data, i64 14
  %vihl = load i8, i8* %pvihl, align 1
  ; Version 4, 5 words: no options.
  %plain = icmp eq i8 %vihl, 69
  br i1 %plain, label %frag, label %pass

frag:
  %pfrag = getelementptr inbounds i8, i8* %data, i64 20
  %pfrag16 = bitcast i8* %pfrag to i16*
  %fragoff = load i16, i16* %pfrag16, align 1
  ; More fragments and the offset: 0x3fff in network byte order, read little-endian.
  %fragbits = and i16 %fragoff, -193
  %whole = icmp eq i16 %fragbits, 0
  br i1 %whole, label %v4_udp, label %pass

v4_udp:
  %pprot = getelementptr inbounds i8, i8* %data, i64 23
  %prot = load i8, i8* %pprot, align 1
  %is_udp4 = icmp eq i8 %prot, 17
  br i1 %is_udp4, label %v4_port, label %pass

v4_port:
  %pdport4 = getelementptr inbounds i8, i8* %data, i64 36
  br label %lookup

maybe_v6:
  %is_v6 = icmp eq i16 %proto, -8826
  br i1 %is_v6, label %ipv6, label %pass

ipv6:
  ; Ethernet (14) + IPv6 (40) + UDP (8) = 62 bytes.
  %v6_end = getelementptr inbounds i8, i8* %data, i64 62
  %short6 = icmp ugt i8* %v6_end, %end
  br i1 %short6, label %pass, label %v6_next

v6_next:
  %pnext = getelementptr inbounds i8, i8* %data, i64 20
  %next = load i8, i8* %pnext, align 1
  %is_udp6 = icmp eq i8 %next, 17
  br i1 %is_udp6, label %v6_port, label %pass

v6_port:
  %pdport6 = getelementptr inbounds i8, i8* %data, i64 56
  br label %lookup

lookup:
  %pdport = phi i8* [ %pdport4, %v4_port ], [ %pdport6, %v6_port ]
  %pdport16 = bitcast i8* %pdport to i16*
  %dp = load i16, i16* %pdport16, align 1
  store i32 0, i32* %key, align 4
  %keyp = bitcast i32* %key to i8*
  ; bpf_map_lookup_elem(&port, &key)
  %found = call i8* inttoptr (i64 1 to i8* (i8*, i8*)*)(i8* bitcast (%struct.bpf_map_def* @port to i8*), i8* %keyp)
  %none = icmp eq i8* %found, null
  br i1 %none, label %pass, label %compare

compare:
  %portp = bitcast i8* %found to i32*
  %port32 = load i32, i32* %portp, align 4
  %port16 = trunc i32 %port32 to i16
  %ours = icmp eq i16 %dp, %port16
  br i1 %ours, label %redirect, label %pass

redirect:
  %pq = getelementptr inbounds %struct.xdp_md, %struct.xdp_md* %ctx, i64 0, i32 4
  %queue = load i32, i32* %pq, align 4
  %q64 = zext i32 %queue to i64
  ; bpf_redirect_map(&xsks, queue, XDP_PASS): XDP_REDIRECT, or XDP_PASS without a socket.
  %r = call i64 inttoptr (i64 51 to i64 (i8*, i64, i64)*)(i8* bitcast (%struct.bpf_map_def* @xsks to i8*), i64 %q64, i64 2)
  %r32 = trunc i64 %r to i32
  ret i32 %r32

pass:
  ret i32 2
}

attributes #0 = { nounwind }
