"""NACK repair through ringbridge, driven by aiortc, on a lossy link (tests/nack_repair.rs).

A publisher in this (the host's) network namespace sends numbered video frames over WHIP; a
viewer in another network namespace plays them over WHEP. The link towards the viewer loses
packets (the test sets that up); the publisher never retransmits: it counts the sequence numbers
NACKs ask it for and ignores them (and ignores REMB, so the bitrate stays put). Whatever the viewer
gets back of a lost packet therefore comes from the bridge.

The viewer counts the distinct frame numbers it decodes, the sequence numbers its NACKs ask for,
and the retransmissions it receives: packets on an RTX payload type or SSRC, and plain resends
(a packet on the media SSRC whose sequence number it had NACKed and not received before).

The numbered frames start once the viewer decodes a readable frame (at most PLAYING_SECS after
media reached it), and the count ends after the last numbered frame was decoded or TAIL_SECS.

Usage:
  nack_repair.py run BASE_URL STREAM NETNS VIEWER_ADDR PUBLISHER_ADDR
      publishes from PUBLISHER_ADDR, starts the viewer inside NETNS (`ip netns exec`), prints one
      JSON line: {"sent", "played", "warmup_secs", "last_decoded", "publisher": {...},
      "viewer": {...}}; exits 1 when something failed.
  nack_repair.py view BASE_URL STREAM VIEWER_ADDR
      the viewer (run by `run`): prints "receiving" once RTP reaches it, "playing" once it
      decodes a readable frame, "last" once it decoded the last numbered one, and on "stop" (or
      EOF) on its stdin its JSON report; then ends its session.
"""

import asyncio
import fractions
import json
import sys
import time

import aioice.ice
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
)
from aiortc.codecs import vpx
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
)
from av import VideoFrame

# WHIP/WHEP signalling as the aiortc stream test does it (same directory).
from aiortc_stream import http, negotiate

WIDTH, HEIGHT, BLOCK = 320, 240, 20
FPS = 30
# Numbered frames: 12 s of video.
COUNTED = 360
UNCOUNTED = 0xFFFF
# VP8 at aiortc's highest rate on noise of this amplitude (pixel values 0..NOISE-1): about 5 RTP
# packets per frame (a keyframe about 27). Full-range noise would overshoot the rate.
BITRATE = 1_500_000
NOISE = 64
# After the last numbered frame the publisher goes on (unnumbered) for at most this long, so the
# viewer's jitter buffer releases the last frames: at most until the viewer decoded the last one.
TAIL_SECS = 4.0
# Bounds on every wait.
RECEIVING_SECS = 20.0
# Numbering starts when the viewer decodes a readable frame, or this long after media reached it.
PLAYING_SECS = 8.0
VIEWER_EXIT_SECS = 10.0
# The test's one bridge's region.
REGION = "eu"


def draw(number: int, rng: np.random.Generator) -> np.ndarray:
    """The frame's number as 16 black or white blocks, its complement as 16 more below them, and
    noise under both (noise costs VP8 its whole rate: every frame spans several packets)."""
    img = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    img[2 * BLOCK :] = rng.integers(0, NOISE, (HEIGHT - 2 * BLOCK, WIDTH, 3), dtype=np.uint8)
    for bit in range(16):
        on = (number >> (15 - bit)) & 1
        x = bit * BLOCK
        img[0:BLOCK, x : x + BLOCK, :] = 255 if on else 0
        img[BLOCK : 2 * BLOCK, x : x + BLOCK, :] = 0 if on else 255
    return img


def read(frame: VideoFrame) -> int | None:
    """The frame's number, None when the complement does not match (a garbled picture)."""
    gray = frame.to_ndarray(format="gray")
    h, w = gray.shape
    sx, sy = w / WIDTH, h / HEIGHT
    rows = []
    for row in range(2):
        y0, y1 = int((row * BLOCK + 5) * sy), int(((row + 1) * BLOCK - 5) * sy)
        bits = 0
        for bit in range(16):
            x0, x1 = int((bit * BLOCK + 5) * sx), int(((bit + 1) * BLOCK - 5) * sx)
            bits = (bits << 1) | int(gray[y0:y1, x0:x1].mean() > 128)
        rows.append(bits)
    return rows[0] if rows[0] ^ rows[1] == 0xFFFF else None


def only_host_address(addr: str) -> None:
    """ICE host candidates on `addr` only (the bridge's media address is reachable from it)."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [addr]


T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:5.1f}] {msg}", file=sys.stderr, flush=True)


# --- publisher -----------------------------------------------------------------------------


class Counter(MediaStreamTrack):
    """Frames at FPS, numbered 0..COUNTED-1 once `start` is set, UNCOUNTED before and after."""

    kind = "video"

    def __init__(self):
        super().__init__()
        self.start = asyncio.Event()
        self.t = 0
        self.sent = 0
        self.t0 = None
        self.rng = np.random.default_rng(1)

    async def recv(self):
        if self.t0 is None:
            self.t0 = time.monotonic()
        self.t += 1
        await asyncio.sleep(max(0, self.t0 + self.t / FPS - time.monotonic()))
        if self.start.is_set() and self.sent < COUNTED:
            number = self.sent
            self.sent += 1
        else:
            number = UNCOUNTED
        frame = VideoFrame.from_ndarray(draw(number, self.rng), format="rgb24")
        frame.pts = self.t
        frame.time_base = fractions.Fraction(1, FPS)
        return frame


# What NACKs asked the publisher for: it never retransmits.
PUBLISHER = {"nacked": 0, "nack_packets": 0, "remb_ignored": 0}


def publisher_never_retransmits() -> None:
    """Patches aiortc's sender: generic NACKs are counted (sequence numbers asked for) and
    dropped, so nothing is retransmitted; REMB is dropped too (the encoder stays at BITRATE)."""
    handle = RTCRtpSender._handle_rtcp_packet

    async def patched(self, packet):
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            PUBLISHER["nacked"] += len(packet.lost)
            PUBLISHER["nack_packets"] += 1
            return
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            PUBLISHER["remb_ignored"] += 1
            return
        await handle(self, packet)

    RTCRtpSender._handle_rtcp_packet = patched

    init = vpx.Vp8Encoder.__init__

    def fixed_rate(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.target_bitrate = BITRATE

    vpx.Vp8Encoder.__init__ = fixed_rate


async def run(base: str, stream: str, netns: str, viewer_addr: str, publisher_addr: str) -> int:
    only_host_address(publisher_addr)
    publisher_never_retransmits()
    publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = Counter()
    sender = publisher.addTransceiver(video, direction="sendonly").sender
    pub_session = await negotiate(publisher, f"{base}/whip/{stream}?region={REGION}")

    viewer = await asyncio.create_subprocess_exec(
        *("ip", "netns", "exec", netns, sys.executable, __file__),
        *("view", base, stream, viewer_addr),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )

    async def until(event: bytes, secs: float) -> bool:
        """Whether the viewer says `event` within `secs` (skipping its earlier events)."""
        deadline = time.monotonic() + secs
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = await asyncio.wait_for(viewer.stdout.readline(), left)
            except asyncio.TimeoutError:
                break
            if not line:
                raise RuntimeError(f"the viewer ended (waiting for {event!r})")
            if line.strip() == event:
                return True
        return False

    report = {"sent": 0}
    ok = False
    try:
        if not await until(b"receiving", RECEIVING_SECS):
            raise RuntimeError("no media reached the viewer")
        # The numbered frames go out once the viewer plays (or PLAYING_SECS on), then unnumbered
        # ones for TAIL_SECS or until the viewer decoded the last numbered frame.
        t = time.monotonic()
        report["played"] = await until(b"playing", PLAYING_SECS)
        report["warmup_secs"] = round(time.monotonic() - t, 1)
        log(f"numbering {COUNTED} frames after {report['warmup_secs']} s of media")
        video.start.set()
        deadline = time.monotonic() + COUNTED / FPS + 10
        while video.sent < COUNTED and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        report["last_decoded"] = await until(b"last", TAIL_SECS)
        viewer.stdin.write(b"stop\n")
        await viewer.stdin.drain()
        line = await asyncio.wait_for(viewer.stdout.readline(), VIEWER_EXIT_SECS)
        report["viewer"] = json.loads(line)
        await asyncio.wait_for(viewer.wait(), VIEWER_EXIT_SECS)
        report["sent"] = video.sent
        stats = await sender.getStats()
        packets = next((s.packetsSent for s in stats.values() if s.type == "outbound-rtp"), 0)
        report["publisher"] = dict(
            PUBLISHER, packets=packets, packets_per_frame=round(packets / max(1, video.t), 2)
        )
        ok = video.sent == COUNTED and viewer.returncode == 0
    finally:
        if viewer.returncode is None:
            viewer.kill()
            await viewer.wait()
        status, _, _ = await asyncio.to_thread(http, "DELETE", pub_session)
        report["publisher_deleted"] = status
        ok = ok and status == 200
        await publisher.close()
    report["ok"] = ok
    print(json.dumps(report), flush=True)
    return 0 if ok else 1


# --- viewer --------------------------------------------------------------------------------


class Seen:
    """What reached the viewer's RTP stack, and what its NACKs asked for."""

    def __init__(self):
        self.nacked = 0  # sequence numbers asked for, over all NACKs (aiortc repeats them)
        self.nack_packets = 0
        self.asked: dict[int, set[int]] = {}  # media SSRC -> sequence numbers ever NACKed
        self.got: dict[int, set[int]] = {}  # SSRC -> sequence numbers received
        self.packets = 0
        self.rtx = 0  # on an RTX payload type or SSRC
        self.resent = 0  # on the media SSRC, NACKed before and not received before
        self.rtx_pts: set[int] = set()
        self.rtx_ssrcs: set[int] = set()

    def learn(self, sdp: str) -> None:
        """RTX payload types and SSRCs of the answer (the bridge's), if it has any."""
        for line in sdp.splitlines():
            if line.startswith("a=rtpmap:") and " rtx/" in line.lower():
                self.rtx_pts.add(int(line[len("a=rtpmap:") :].split()[0]))
            elif line.startswith("a=ssrc-group:FID "):
                self.rtx_ssrcs.update(int(s) for s in line.split()[2:])

    def rtp(self, data: bytes) -> None:
        """A decrypted RTP packet, before aiortc routes it (RTX included, negotiated or not)."""
        if len(data) < 12:
            return
        pt = data[1] & 0x7F
        seq = int.from_bytes(data[2:4], "big")
        ssrc = int.from_bytes(data[8:12], "big")
        self.packets += 1
        say("receiving")
        if pt in self.rtx_pts or ssrc in self.rtx_ssrcs:
            self.rtx += 1
            return
        got = self.got.setdefault(ssrc, set())
        if seq in self.asked.get(ssrc, ()) and seq not in got:
            self.resent += 1
        got.add(seq)

    def nack(self, packet: RtcpRtpfbPacket) -> None:
        self.nacked += len(packet.lost)
        self.nack_packets += 1
        self.asked.setdefault(packet.media_ssrc, set()).update(s % 65536 for s in packet.lost)


SEEN = Seen()


def viewer_counts() -> None:
    """Patches aiortc: every decrypted RTP packet goes through SEEN.rtp first, and every generic
    NACK a receiver sends through SEEN.nack."""
    handle_rtp = RTCDtlsTransport._handle_rtp_data

    async def rtp(self, data: bytes, arrival_time_ms: int) -> None:
        SEEN.rtp(data)
        await handle_rtp(self, data, arrival_time_ms=arrival_time_ms)

    RTCDtlsTransport._handle_rtp_data = rtp

    send_rtcp = RTCRtpReceiver._send_rtcp

    async def rtcp(self, packet) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            SEEN.nack(packet)
        await send_rtcp(self, packet)

    RTCRtpReceiver._send_rtcp = rtcp


SAID: set[str] = set()


def say(event: str) -> None:
    """Tells the driver (on stdout) that `event` happened, once."""
    if event not in SAID:
        SAID.add(event)
        print(event, flush=True)


async def view(base: str, stream: str, addr: str) -> int:
    only_host_address(addr)
    viewer_counts()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    numbers: set[int] = set()
    decoded = garbled = 0

    async def consume(track):
        nonlocal decoded, garbled
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            decoded += 1
            n = read(frame)
            if n is None:
                garbled += 1
                continue
            say("playing")
            numbers.add(n)
            if n == COUNTED - 1:
                say("last")

    pc.on("track", lambda track: asyncio.ensure_future(consume(track)))
    pc.addTransceiver("video", direction="recvonly")
    session = await negotiate(pc, f"{base}/whep/{stream}?region={REGION}")
    SEEN.learn(pc.remoteDescription.sdp)

    # Until "stop" or EOF (the driver is gone), within a bound either way.
    stdin = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin
    )
    bound = RECEIVING_SECS + PLAYING_SECS + COUNTED / FPS + TAIL_SECS + 10
    await asyncio.wait([asyncio.ensure_future(stdin.readline())], timeout=bound)

    got = numbers & set(range(COUNTED))
    report = {
        "decoded": len(got),
        "share": round(len(got) / COUNTED, 4),
        "decoded_frames": decoded,  # numbered or not, readable or not
        "garbled_frames": garbled,  # decoded pictures whose number does not read
        "bogus": sorted(n for n in numbers if COUNTED <= n < UNCOUNTED)[:10],
        "packets": SEEN.packets,
        "nacked": SEEN.nacked,
        "nacked_distinct": sum(len(s) for s in SEEN.asked.values()),
        "nack_packets": SEEN.nack_packets,
        "rtx": SEEN.rtx,
        "resent": SEEN.resent,
        "retransmissions": SEEN.rtx + SEEN.resent,
        "rtx_negotiated": bool(SEEN.rtx_pts),
    }
    print(json.dumps(report), flush=True)
    status, _, _ = await asyncio.to_thread(http, "DELETE", session)
    await pc.close()
    return 0 if status == 200 else 1


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "run":
        sys.exit(asyncio.run(run(*args)))
    elif mode == "view":
        sys.exit(asyncio.run(view(*args)))
    sys.exit(f"unknown mode {mode!r}")
