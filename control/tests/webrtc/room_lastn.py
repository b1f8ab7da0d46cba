"""Last-N and the dominant speaker in a ringbridge room, with aiortc (a WebRTC stack nobody here
wrote).

Five participants (A, B, C in the first region, D and E in the second) publish a small video and
an audio track into the room and watch each other with last_n=2. A speaks (a loud tone; the
others send silence), then B, then C. The room's events must announce A, B, C as dominant
speaker in that order; then every receiver gets the video of exactly the two most recent
speakers other than itself (C and B; B gets C and A, C gets B and A), counted in RTP packets per
SSRC at the receiver, and the audio of everyone.

Usage: room_lastn.py HTTP_BASE ROOM REGION1 REGION2
Prints one JSON line; exits 1 on failure.
"""

import asyncio
import fractions
import json
import sys
import threading
import time
import urllib.request

import aioice.ice
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from av import AudioFrame, VideoFrame

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

FPS = 10
SPEAK_SECS = 2.5


class Picture(MediaStreamTrack):
    kind = "video"

    def __init__(self, shade: int):
        super().__init__()
        self.shade = shade
        self.t = 0
        self.t0 = None

    async def recv(self):
        if self.t0 is None:
            self.t0 = time.monotonic()
        self.t += 1
        await asyncio.sleep(max(0, self.t0 + self.t / FPS - time.monotonic()))
        img = np.full((120, 160, 3), self.shade, dtype=np.uint8)
        img[:, :, 1] = (np.arange(160) + self.t * 4) % 256
        frame = VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = self.t
        frame.time_base = fractions.Fraction(1, FPS)
        return frame


class Voice(MediaStreamTrack):
    """A loud tone while `loud`, silence otherwise (the RFC 6464 level follows)."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self.loud = False
        self.pts = 0
        self.t0 = None

    async def recv(self):
        if self.t0 is None:
            self.t0 = time.monotonic()
        samples = 960
        await asyncio.sleep(max(0, self.t0 + self.pts / 48000 - time.monotonic()))
        if self.loud:
            data = (np.sin(np.arange(self.pts, self.pts + samples) / 8) * 12000).astype(np.int16)
        else:
            data = np.zeros(samples, dtype=np.int16)
        frame = AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, 48000)
        self.pts += samples
        return frame


def http(method: str, url: str, body: bytes | None = None):
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/sdp")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def negotiate(pc: RTCPeerConnection, base: str, url: str) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    for _ in range(20):
        status, headers, body = await asyncio.to_thread(http, "POST", url, pc.localDescription.sdp.encode())
        if status != 503:
            break
        await asyncio.sleep(0.3)  # the room is busy (an operation in flight)
    if status != 201:
        raise RuntimeError(f"POST {url}: {status} {body[:300]!r}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body.decode(), type="answer"))
    location = headers.get("Location") or headers.get("location")
    return base + location


class Watch:
    def __init__(self):
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video = 0
        self.audio = 0
        self.session = None

        @self.pc.on("track")
        def on_track(track):
            asyncio.ensure_future(self.consume(track))

    async def counts(self) -> tuple[int, int]:
        """(video RTP packets received, audio frames decoded) so far. Video is counted in
        packets per SSRC at the receiver (getStats), not decoded frames: aiortc's jitter buffer
        stalls on a sequence gap shorter than its capacity, which a stream paused by last-N and
        resumed leaves (see docs/rooms.md)."""
        video = 0
        for s in (await self.pc.getStats()).values():
            if getattr(s, "type", "") == "inbound-rtp" and getattr(s, "kind", "") == "video":
                video += s.packetsReceived
        return video, self.audio

    async def consume(self, track):
        while True:
            try:
                await track.recv()
            except Exception:
                return
            if track.kind == "audio":
                self.audio += 1
            else:
                self.video += 1


class Person:
    def __init__(self, name: str, region: str, shade: int):
        self.name = name
        self.region = region
        self.voice = Voice()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver(Picture(shade), direction="sendonly")
        self.pc.addTransceiver(self.voice, direction="sendonly")
        self.session = None
        self.id = None
        self.watches: dict[str, Watch] = {}


def follow(url: str, seen: list, stop: threading.Event):
    """Reads the room's events (SSE) into `seen` until `stop`."""
    with urllib.request.urlopen(url, timeout=120) as r:
        for raw in r:
            if stop.is_set():
                return
            line = raw.decode().strip()
            if line.startswith("data:"):
                seen.append(json.loads(line[5:]))


async def main() -> int:
    base, room, region1, region2 = sys.argv[1:]
    rb = f"{base}/room/{room}"
    people = [
        Person(n, region1 if n in "ABC" else region2, 40 * i) for i, n in enumerate("ABCDE")
    ]
    for p in people:
        p.session = await negotiate(p.pc, base, f"{rb}/publish?region={p.region}")
        p.id = p.session.rsplit("/", 1)[1]
    seen: list = []
    stop = threading.Event()
    threading.Thread(target=follow, args=(f"{rb}/events", seen, stop), daemon=True).start()
    for p in people:
        for q in people:
            if q is p:
                continue
            w = Watch()
            w.pc.addTransceiver("video", direction="recvonly")
            w.pc.addTransceiver("audio", direction="recvonly")
            w.session = await negotiate(
                w.pc, base, f"{rb}/watch/{q.id}?region={p.region}&last_n=2&owner={p.id}"
            )
            p.watches[q.name] = w
    # Everyone hears everyone before anyone speaks.
    deadline = time.monotonic() + 40
    while not all(w.audio > 20 for p in people for w in p.watches.values()):
        if time.monotonic() > deadline:
            raise RuntimeError(
                "audio: " + json.dumps({p.name: {k: w.audio for k, w in p.watches.items()} for p in people})
            )
        await asyncio.sleep(0.5)
    name_of = {p.id: p.name for p in people}
    initial = {p.name: {k: w.video for k, w in p.watches.items()} for p in people}
    for speaker in "ABC":
        for p in people:
            p.voice.loud = p.name == speaker
        await asyncio.sleep(SPEAK_SECS)
    for p in people:
        p.voice.loud = False
    await asyncio.sleep(1.5)  # subscriptions settle
    before = {p.name: {k: await w.counts() for k, w in p.watches.items()} for p in people}
    await asyncio.sleep(3)
    after = {p.name: {k: await w.counts() for k, w in p.watches.items()} for p in people}
    stop.set()

    speakers = []
    for v in seen:
        s = name_of.get(v.get("speaker"), v.get("speaker"))
        if s and (not speakers or speakers[-1] != s):
            speakers.append(s)
    report = {"speakers": speakers, "receivers": {}, "initial": initial, "ids": name_of}
    ok = speakers == ["A", "B", "C"]
    for p in people:
        video = sorted(k for k in p.watches if after[p.name][k][0] - before[p.name][k][0] >= 10)
        silent_audio = sorted(k for k in p.watches if after[p.name][k][1] - before[p.name][k][1] < 50)
        # The two most recent speakers other than the receiver itself (C, B, A in that order).
        want = sorted([x for x in "CBA" if x != p.name][:2])
        report["receivers"][p.name] = {
            "video_from": video,
            "want": want,
            "no_audio_from": silent_audio,
            "video_packets": {k: after[p.name][k][0] - before[p.name][k][0] for k in p.watches},
            "total_frames": {k: w.video for k, w in p.watches.items()},
        }
        ok = ok and video == want and not silent_audio
    for p in people:
        for w in p.watches.values():
            await asyncio.to_thread(http, "DELETE", w.session)
            await w.pc.close()
        await asyncio.to_thread(http, "DELETE", p.session)
        await p.pc.close()
    report["ok"] = ok
    print(json.dumps(report), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
