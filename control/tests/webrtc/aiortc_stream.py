"""A live stream through ringbridge with aiortc, a WebRTC stack nobody here wrote.

One publisher sends a synthetic video track (each frame carries its number, drawn as 16 black or
white blocks) and an audio track over WHIP; viewers play it over WHEP. Once every viewer decodes
the stream, the publisher numbers 150 frames; each viewer must decode at least 95 % of them, and
every frame it decodes must be one of those sent. Every session ends with DELETE.

Usage: aiortc_stream.py BASE_URL STREAM PUBLISHER_REGION VIEWER_REGION [VIEWER_REGION ...]
Prints one JSON line with what each viewer got; exits 1 on failure.
"""

import asyncio
import fractions
import json
import sys
import time
import urllib.request

import aioice.ice
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from av import AudioFrame, VideoFrame

# The bridge listens on loopback; aioice leaves loopback out of its host candidates.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

WIDTH, HEIGHT, BLOCK = 320, 240, 20
COUNTED = 150
UNCOUNTED = 0xFFFF
FPS = 30


def draw(number: int, t: int) -> np.ndarray:
    img = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    img[:, :, 1] = (np.arange(WIDTH) + t * 4) % 256  # something that moves
    for bit in range(16):
        on = (number >> (15 - bit)) & 1
        x = bit * BLOCK
        img[0 : 2 * BLOCK, x : x + BLOCK, :] = 255 if on else 0
    return img


def read(frame: VideoFrame) -> int:
    gray = frame.to_ndarray(format="gray")
    h, w = gray.shape
    sx, sy = w / WIDTH, h / HEIGHT
    number = 0
    for bit in range(16):
        x0, x1 = int((bit * BLOCK + 4) * sx), int(((bit + 1) * BLOCK - 4) * sx)
        y0, y1 = int(6 * sy), int((2 * BLOCK - 6) * sy)
        number = (number << 1) | int(gray[y0:y1, x0:x1].mean() > 128)
    return number


class Counter(MediaStreamTrack):
    """Video frames at FPS; numbered 0..COUNTED-1 once `start` is set, UNCOUNTED before."""

    kind = "video"

    def __init__(self):
        super().__init__()
        self.start = asyncio.Event()
        self.t = 0
        self.sent = 0
        self.t0 = None

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
        frame = VideoFrame.from_ndarray(draw(number, self.t), format="rgb24")
        frame.pts = self.t
        frame.time_base = fractions.Fraction(1, FPS)
        return frame


class Tone(MediaStreamTrack):
    kind = "audio"

    def __init__(self):
        super().__init__()
        self.pts = 0
        self.t0 = None

    async def recv(self):
        if self.t0 is None:
            self.t0 = time.monotonic()
        samples = 960
        await asyncio.sleep(max(0, self.t0 + self.pts / 48000 - time.monotonic()))
        data = (np.sin(np.arange(self.pts, self.pts + samples) / 20) * 8000).astype(np.int16)
        frame = AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, 48000)
        self.pts += samples
        return frame


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/sdp")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def negotiate(pc: RTCPeerConnection, url: str) -> str:
    """POSTs the offer to a WHIP/WHEP URL, applies the answer; returns the session URL."""
    await pc.setLocalDescription(await pc.createOffer())
    status, headers, body = await asyncio.to_thread(
        http, "POST", url, pc.localDescription.sdp.encode()
    )
    if status != 201:
        raise RuntimeError(f"POST {url}: {status} {body[:300]!r}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body.decode(), type="answer"))
    location = headers.get("Location") or headers.get("location")
    base = url.split("/wh")[0]
    return location if location.startswith("http") else base + location


class Viewer:
    def __init__(self, name: str):
        self.name = name
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.numbers: list[int] = []
        self.uncounted = 0
        self.audio_frames = 0
        self.first = asyncio.Event()
        self.session = None

        @self.pc.on("track")
        def on_track(track):
            asyncio.ensure_future(self.consume(track))

    async def consume(self, track):
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            if track.kind == "audio":
                self.audio_frames += 1
                continue
            n = read(frame)
            self.first.set()
            if n == UNCOUNTED:
                self.uncounted += 1
            else:
                self.numbers.append(n)


async def main() -> int:
    base, stream, pub_region, *viewer_regions = sys.argv[1:]
    publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video, audio = Counter(), Tone()
    publisher.addTransceiver(video, direction="sendonly")
    publisher.addTransceiver(audio, direction="sendonly")
    pub_session = await negotiate(publisher, f"{base}/whip/{stream}?region={pub_region}")

    viewers = []
    for i, region in enumerate(viewer_regions):
        v = Viewer(f"viewer{i}-{region}")
        v.pc.addTransceiver("video", direction="recvonly")
        v.pc.addTransceiver("audio", direction="recvonly")
        v.session = await negotiate(v.pc, f"{base}/whep/{stream}?region={region}")
        viewers.append(v)

    # Every viewer decodes the stream, then the numbered frames go out.
    await asyncio.wait_for(asyncio.gather(*(v.first.wait() for v in viewers)), 30)
    video.start.set()
    deadline = time.monotonic() + COUNTED / FPS + 15
    while time.monotonic() < deadline:
        if video.sent >= COUNTED and all(
            len(set(v.numbers)) >= COUNTED or (v.numbers and v.numbers[-1] == COUNTED - 1)
            for v in viewers
        ):
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)  # the last frames in flight

    report = {"sent": video.sent, "viewers": []}
    ok = video.sent == COUNTED
    for v in viewers:
        got = set(v.numbers)
        bogus = sorted(n for n in got if n >= COUNTED)
        share = len(got & set(range(COUNTED))) / COUNTED
        report["viewers"].append(
            {
                "name": v.name,
                "decoded": len(got),
                "share": round(share, 3),
                "bogus": bogus[:10],
                "audio_frames": v.audio_frames,
            }
        )
        ok = ok and share >= 0.95 and not bogus and v.audio_frames > 0

    for pc, url in [(publisher, pub_session)] + [(v.pc, v.session) for v in viewers]:
        status, _, _ = await asyncio.to_thread(http, "DELETE", url)
        report.setdefault("deleted", []).append(status)
        ok = ok and status == 200
        await pc.close()
    report["ok"] = ok
    print(json.dumps(report), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
