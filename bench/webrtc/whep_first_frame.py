"""Time from `POST /whep` to the first decoded video frame, for aiortc viewers of a stream that an
aiortc publisher sends through ringbridge (WHIP to an origin, WHEP viewers on an edge).

What runs (everything bounded in count and time):
- One publisher: a synthetic 320x240 video track at 30 fps (VP8, aiortc's encoder; keyframes
  only when asked, as aiortc does) over `POST /whip/STREAM?region=PUB_REGION`.
- An *anchor* viewer joins first and stays to the end: it is the edge's first viewer (the edge
  starts pulling the stream from the origin for it), so its time is reported apart ("cold").
- Then `--viewers` viewers over `POST /whep/STREAM?region=VIEWER_REGION`, `--batch` at a time
  (1: one after another), `--gap-ms` apart (0: the next as soon as the last has its frame and
  has left); each is measured from the moment its POST starts to the first video
  frame its `track.recv()` returns (decoded), then ends its session (DELETE) and closes, so at
  most `--batch` + 1 viewers decode at once on this machine. Also recorded per viewer: when the
  201 answer arrived and when aiortc reported the connection `connected` (ICE + DTLS done).
- Baseline in the same run (`--baseline N`, 0 to skip): the same measurement without ringbridge:
  a fresh aiortc sender (its own synthetic track) answers a fresh aiortc viewer's offer directly
  in this process, one pair after another: from the moment the offer is handed over to the
  first decoded frame. That is what aiortc itself needs (full ICE on both sides, DTLS, a first
  keyframe from a new encoder).

Creating the offer (before the POST) is timed apart and not included.

Usage: whep_first_frame.py BASE_URL [--viewers 50] [--batch 1] [--baseline 50] [--json FILE]
Prints a summary; exits 1 if any viewer got no frame.
"""

import argparse
import asyncio
import fractions
import json
import os
import statistics
import sys
import time

import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from av import VideoFrame

# The WHIP/WHEP client of the end-to-end test: `http` (one request) and, on import, aioice's
# host candidates limited to loopback (where the bridges listen).
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../control/tests/webrtc"))
from aiortc_stream import http  # noqa: E402

WIDTH, HEIGHT, FPS = 320, 240, 30


class Picture(MediaStreamTrack):
    """A moving synthetic picture at FPS."""

    kind = "video"

    def __init__(self):
        super().__init__()
        self.t = 0
        self.t0 = None

    async def recv(self):
        if self.t0 is None:
            self.t0 = time.monotonic()
        self.t += 1
        await asyncio.sleep(max(0, self.t0 + self.t / FPS - time.monotonic()))
        img = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        img[:, :, 1] = (np.arange(WIDTH) + self.t * 4) % 256
        img[:, :, 2] = (np.arange(HEIGHT)[:, None] + self.t * 2) % 256
        frame = VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = self.t
        frame.time_base = fractions.Fraction(1, FPS)
        return frame


def candidate(sdp: str) -> str:
    """The answer's host candidate, `ip:port` (which bridge the session is on)."""
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            f = line.split()
            return f"{f[4]}:{f[5]}"
    return ""


def session_url(base: str, headers: dict) -> str:
    location = headers.get("Location") or headers.get("location")
    return location if location.startswith("http") else base + location


class Viewer:
    """One aiortc viewer: a recvonly video transceiver; marks when things happen."""

    def __init__(self):
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")
        self.first = asyncio.get_running_loop().create_future()
        self.marks: dict[str, float] = {}
        self.session = None

        @self.pc.on("track")
        def on_track(track):
            if track.kind == "video":
                asyncio.ensure_future(self.consume(track))

        @self.pc.on("connectionstatechange")
        def on_state():
            if self.pc.connectionState == "connected":
                self.marks.setdefault("connected", time.monotonic())

    async def consume(self, track):
        while True:
            try:
                await track.recv()
            except Exception:
                return
            if not self.first.done():
                self.marks["frame"] = time.monotonic()
                self.first.set_result(True)

    async def close(self):
        if self.session:
            await asyncio.to_thread(http, "DELETE", self.session)
        await self.pc.close()


async def whep(base: str, stream: str, region: str, timeout: float) -> tuple[Viewer, dict]:
    """Joins one viewer and waits for its first frame; returns it (still open) and its times
    (ms from the start of the POST)."""
    v = Viewer()
    t = time.monotonic()
    await v.pc.setLocalDescription(await v.pc.createOffer())
    offer_ms = (time.monotonic() - t) * 1e3
    t0 = time.monotonic()
    status, headers, body = await asyncio.to_thread(
        http, "POST", f"{base}/whep/{stream}?region={region}", v.pc.localDescription.sdp.encode()
    )
    answered = time.monotonic()
    if status != 201:
        await v.pc.close()
        raise RuntimeError(f"POST /whep: {status} {body[:200]!r}")
    v.session = session_url(base, headers)
    answer = body.decode()
    await v.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    r = {"offer_ms": offer_ms, "answer_ms": (answered - t0) * 1e3, "bridge": candidate(answer)}
    try:
        await asyncio.wait_for(asyncio.shield(v.first), timeout)
    except asyncio.TimeoutError:
        r["error"] = f"no frame in {timeout} s"
    for k in ("connected", "frame"):
        if k in v.marks:
            r[f"{k}_ms"] = (v.marks[k] - t0) * 1e3
    return v, r


async def direct(timeout: float) -> dict:
    """The baseline: a fresh aiortc sender answers a fresh aiortc viewer directly."""
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    v = Viewer()
    try:
        await v.pc.setLocalDescription(await v.pc.createOffer())
        t0 = time.monotonic()
        await sender.setRemoteDescription(v.pc.localDescription)
        sender.addTrack(Picture())
        await sender.setLocalDescription(await sender.createAnswer())
        answered = time.monotonic()
        await v.pc.setRemoteDescription(sender.localDescription)
        r = {"answer_ms": (answered - t0) * 1e3}
        try:
            await asyncio.wait_for(asyncio.shield(v.first), timeout)
        except asyncio.TimeoutError:
            r["error"] = f"no frame in {timeout} s"
        for k in ("connected", "frame"):
            if k in v.marks:
                r[f"{k}_ms"] = (v.marks[k] - t0) * 1e3
        return r
    finally:
        await v.pc.close()
        await sender.close()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def summary(rows: list[dict], key: str) -> dict:
    v = [r[key] for r in rows if key in r]
    if not v:
        return {}
    return {
        "n": len(v),
        "p50": round(percentile(v, 50), 1),
        "p99": round(percentile(v, 99), 1),
        "max": round(max(v), 1),
        "mean": round(statistics.fmean(v), 1),
    }


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="the control plane's HTTP address, e.g. http://127.0.0.1:8080")
    ap.add_argument("--stream", default="bench")
    ap.add_argument("--publisher-region", default="eu")
    ap.add_argument("--viewer-region", default="us")
    ap.add_argument("--viewers", type=int, default=50)
    ap.add_argument("--batch", type=int, default=1, help="viewers joining at once")
    ap.add_argument("--gap-ms", type=float, default=0, help="pause between batches")
    ap.add_argument("--baseline", type=int, default=50, help="direct aiortc pairs (0: none)")
    ap.add_argument("--timeout", type=float, default=20, help="seconds per viewer")
    ap.add_argument("--deadline", type=float, default=300, help="seconds for everything")
    ap.add_argument("--json")
    a = ap.parse_args()
    if not 1 <= a.viewers <= 500 or not 1 <= a.batch <= 20 or not 0 <= a.baseline <= 500:
        ap.error("--viewers 1..500, --batch 1..20, --baseline 0..500")
    deadline = time.monotonic() + a.deadline

    # The publisher, retried while no bridge has registered yet (503).
    publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    publisher.addTransceiver(Picture(), direction="sendonly")
    await publisher.setLocalDescription(await publisher.createOffer())
    for _ in range(100):
        status, headers, body = await asyncio.to_thread(
            http,
            "POST",
            f"{a.base}/whip/{a.stream}?region={a.publisher_region}",
            publisher.localDescription.sdp.encode(),
        )
        if status != 503:
            break
        await asyncio.sleep(0.1)
    if status != 201:
        print(f"POST /whip: {status} {body[:300]!r}", file=sys.stderr)
        return 1
    pub_session = session_url(a.base, headers)
    origin = candidate(body.decode())
    await publisher.setRemoteDescription(RTCSessionDescription(sdp=body.decode(), type="answer"))
    for _ in range(100):
        if publisher.connectionState == "connected":
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)  # the publisher's first frames reach the origin

    anchor, cold = await whep(a.base, a.stream, a.viewer_region, a.timeout)
    rows: list[dict] = []
    while len(rows) < a.viewers and time.monotonic() < deadline:
        n = min(a.batch, a.viewers - len(rows))
        joined = await asyncio.gather(
            *(whep(a.base, a.stream, a.viewer_region, a.timeout) for _ in range(n)),
            return_exceptions=True,
        )
        for j in joined:
            if isinstance(j, BaseException):
                rows.append({"error": repr(j)})
                continue
            v, r = j
            rows.append(r)
            await v.close()
        await asyncio.sleep(a.gap_ms / 1e3)
    await anchor.close()
    status, _, _ = await asyncio.to_thread(http, "DELETE", pub_session)
    await publisher.close()

    base_rows: list[dict] = []
    while len(base_rows) < a.baseline and time.monotonic() < deadline:
        base_rows.append(await direct(a.timeout))

    failed = [r for r in rows + base_rows + [cold] if "error" in r or "frame_ms" not in r]
    on_edge = sum(1 for r in rows if r.get("bridge") and r["bridge"] != origin)
    report = {
        "viewers": len(rows),
        "batch": a.batch,
        "gap_ms": a.gap_ms,
        "origin": origin,
        "viewers_on_an_edge": on_edge,
        "cold_first_viewer": cold,
        "post_to_first_frame_ms": summary(rows, "frame_ms"),
        "post_to_answer_ms": summary(rows, "answer_ms"),
        "post_to_connected_ms": summary(rows, "connected_ms"),
        "offer_ms": summary(rows, "offer_ms"),
        "baseline_direct": {
            "pairs": len(base_rows),
            "offer_to_first_frame_ms": summary(base_rows, "frame_ms"),
            "offer_to_answer_ms": summary(base_rows, "answer_ms"),
            "offer_to_connected_ms": summary(base_rows, "connected_ms"),
        },
        "failed": len(failed),
        "errors": [r.get("error") for r in failed][:10],
        "rows": rows,
        "baseline_rows": base_rows,
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")

    def line(name: str, s: dict) -> str:
        if not s:
            return f"{name:<34} -"
        return (
            f"{name:<34} p50 {s['p50']:7.1f}  p99 {s['p99']:7.1f}  max {s['max']:7.1f} ms"
            f"  (n={s['n']})"
        )

    print(
        f"origin {origin}; {on_edge} of {len(rows)} viewers on an edge;"
        f" batch {a.batch}, gap {a.gap_ms:.0f} ms"
    )
    print(line("POST -> first decoded frame", report["post_to_first_frame_ms"]))
    print(line("POST -> 201 answer", report["post_to_answer_ms"]))
    print(line("POST -> connected (ICE + DTLS)", report["post_to_connected_ms"]))
    cold_ms = cold.get("frame_ms", float("nan"))
    print(f"{'cold edge (first viewer)':<34} {cold_ms:.1f} ms to the first frame")
    b = report["baseline_direct"]
    print(line("baseline: offer -> first frame", b["offer_to_first_frame_ms"]))
    print(line("baseline: offer -> connected", b["offer_to_connected_ms"]))
    if failed:
        print(f"{len(failed)} without a frame: {report['errors']}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
