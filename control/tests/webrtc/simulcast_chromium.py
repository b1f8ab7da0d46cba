"""Simulcast through ringbridge in headless Chromium (Debian's chromium + chromium-driver, via
selenium).

One window publishes Chromium's fake camera at 1280x720, 30 fps (and its fake microphone) over
WHIP with three simulcast encodings: rid q (320x180, 150 kbit/s), h (640x360, 500 kbit/s) and f
(1280x720, 1.5 Mbit/s). Two windows play the stream over WHEP; the bridge sends each of them one
video stream (one SSRC), the layer that fits it:

- viewer 1 POSTs with `?max_height=180`: it must decode the q layer (frameWidth <= 320);
- viewer 2 POSTs without a limit: once the publisher sends its top layer, it must decode it
  (frameWidth 1280), while viewer 1 stays on q and goes on decoding it;
- viewer 1's limit is lifted (`PATCH {session}?max_height=0`, no body): within SWITCH_SECS it
  must decode the top layer, on the same SSRC, with framesDecoded still rising and no packets
  lost to the switch (the bridge switches at a keyframe of the new layer and keeps the sequence
  numbers continuous).

Every wait is bounded. Prints one JSON report on stdout (the Rust test asserts on its figures);
progress goes to stderr. Exits 1 when a phase does not complete (the report then says which, with
the last figures).

Usage: simulcast_chromium.py HTTP_BASE STREAM REGION
"""

import json
import sys
import time

from chrome import browser

# Viewer 1 decodes the q layer, frames rising, within this long of its POST.
LOW_SECS = 15
# The publisher sends its top layer, viewer 2 decodes it and viewer 1 still decodes q within this
# long of the publish (Chromium's send-side estimate has to ramp up past the three layers' rates
# first: its top layer started about 25 s after the publish in runs on 2 cores, with neither
# transport-cc nor a REMB from the bridge).
LAYERS_SECS = 40
# Viewer 1 decodes the top layer within this long of the PATCH (two probing steps up; over 40 s
# once in CI under load).
SWITCH_SECS = 60
# Frames each phase wants decoded past its start, at the resolution it waits for.
FRAMES = 30

# window.sim in each window (on the control plane's own page: same origin, a secure context for
# getUserMedia). One RTCPeerConnection per window.
SIM_JS = r"""
window.sim = (() => {
  const ENCODINGS = [
    { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000 },
    { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000 },
    { rid: "f", maxBitrate: 1500000 },
  ];
  let pc = null;
  let location = null;

  // Offer, POST it, apply the answer: the session URL (absolute), the offer and the answer.
  async function negotiate(url) {
    await pc.setLocalDescription(await pc.createOffer());
    const r = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/sdp" },
      body: pc.localDescription.sdp,
    });
    const answer = await r.text();
    if (r.status !== 201) throw new Error("POST " + url + ": " + r.status + " " + answer.trim());
    const loc = r.headers.get("Location");
    if (!loc) throw new Error("POST " + url + ": 201 without a Location");
    location = new URL(loc, url).toString();
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    return { location, offer: pc.localDescription.sdp, answer };
  }

  const pick = (x, keys) => Object.fromEntries(keys.filter((k) => x[k] !== undefined).map((k) => [k, x[k]]));

  return {
    // The fake camera at 1280x720 (30 fps: the browser's --use-fake-device-for-media-stream=fps=30)
    // and microphone, the camera in three encodings.
    async publish(url) {
      const media = await navigator.mediaDevices.getUserMedia({
        audio: true,
        video: { width: { exact: 1280 }, height: { exact: 720 }, frameRate: { ideal: 30 } },
      });
      pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
      pc.addTransceiver(media.getAudioTracks()[0], { direction: "sendonly", streams: [media] });
      const video = pc.addTransceiver(media.getVideoTracks()[0], {
        direction: "sendonly", streams: [media], sendEncodings: ENCODINGS,
      });
      const r = await negotiate(url);
      // Under CPU pressure (2 cores, a CI run beside) drop frames rather than scale the layers
      // down: the test waits for exact widths.
      const p = video.sender.getParameters();
      p.degradationPreference = "maintain-resolution";
      await video.sender.setParameters(p);
      r.rids = video.sender.getParameters().encodings.map((e) => e.rid);
      r.settings = media.getVideoTracks()[0].getSettings();
      return r;
    },

    // Receive video and audio, shown in a <video> (muted: autoplay).
    async play(url) {
      pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
      pc.addTransceiver("video", { direction: "recvonly" });
      pc.addTransceiver("audio", { direction: "recvonly" });
      const shown = new MediaStream();
      const v = document.createElement("video");
      Object.assign(v, { autoplay: true, muted: true, playsInline: true, srcObject: shown });
      document.body.appendChild(v);
      pc.ontrack = (e) => { shown.addTrack(e.track); v.play().catch(() => {}); };
      return negotiate(url);
    },

    // PATCH the session URL with `query` and no body: the status and body.
    async patch(query) {
      const r = await fetch(location + query, { method: "PATCH" });
      return { status: r.status, body: (await r.text()).trim() };
    },

    // DELETE the session (best effort) and close.
    async stop() {
      if (pc) pc.close();
      if (location) { try { await fetch(location, { method: "DELETE" }); } catch (e) { /* gone */ } }
      return true;
    },

    async stats() {
      const f = { connectionState: pc ? pc.connectionState : "", dtlsState: "", video: [], audio: [], layers: [] };
      if (!pc) return f;
      (await pc.getStats()).forEach((x) => {
        if (x.type === "transport" && x.dtlsState) f.dtlsState = x.dtlsState;
        if (x.type === "inbound-rtp" && x.kind === "video") {
          f.video.push(pick(x, [
            "ssrc", "frameWidth", "frameHeight", "framesPerSecond", "framesReceived", "framesDecoded",
            "keyFramesDecoded", "framesDropped", "freezeCount", "packetsReceived", "packetsLost",
            "nackCount", "pliCount", "firCount", "bytesReceived", "decoderImplementation",
          ]));
        }
        if (x.type === "inbound-rtp" && x.kind === "audio") {
          f.audio.push(pick(x, ["ssrc", "packetsReceived", "packetsLost", "totalSamplesReceived"]));
        }
        if (x.type === "outbound-rtp" && x.kind === "video") {
          f.layers.push(pick(x, [
            "rid", "ssrc", "active", "frameWidth", "frameHeight", "framesPerSecond", "framesEncoded",
            "keyFramesEncoded", "bytesSent", "targetBitrate", "qualityLimitationReason", "scalabilityMode",
            "pliCount", "firCount", "nackCount",
          ]));
        }
      });
      f.layers.sort((a, b) => String(a.rid).localeCompare(String(b.rid)));
      return f;
    },
  };
})();
"""


class Failed(Exception):
    """A phase did not complete: what it waited for, and the last figures."""


class Window:
    """One browser window on the control plane's page, with window.sim installed."""

    def __init__(self, drv, page: str, name: str, first: bool = False):
        self.drv = drv
        self.name = name
        if not first:
            drv.switch_to.new_window("window")
        drv.get(page)
        drv.execute_script(SIM_JS)
        self.handle = drv.current_window_handle

    def call(self, fn: str, *args):
        self.drv.switch_to.window(self.handle)
        r = self.drv.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "window.sim[arguments[0]](...Array.from(arguments).slice(1, -1))"
            ".then((r) => done({ok: r}), (e) => done({error: String(e)}));",
            fn,
            *args,
        )
        if "error" in r:
            raise Failed(f"{self.name} {fn}: {r['error']}")
        return r["ok"]

    def stats(self) -> dict:
        return self.call("stats")


def close(drv, windows: list) -> None:
    """Stops every window's session (best effort) and quits the browser."""
    for w in reversed(windows):
        try:
            w.call("stop")
        except Exception:  # noqa: BLE001 - best effort
            pass
    drv.quit()


def video(s: dict) -> dict:
    """A viewer's one inbound video stream (the most advanced one, should there be several)."""
    v = s.get("video") or [{}]
    return max(v, key=lambda x: x.get("framesDecoded") or 0)


def width(s: dict) -> int:
    return int(video(s).get("frameWidth") or 0)


def decoded(s: dict) -> int:
    return int(video(s).get("framesDecoded") or 0)


def layer(s: dict, rid: str) -> dict:
    return next((x for x in s.get("layers") or [] if x.get("rid") == rid), {})


def simulcast_lines(sdp: str) -> list:
    """The lines of `sdp` that say anything about simulcast, under their m-lines ("m=video")."""
    keys = ("a=rid", "a=simulcast", "a=ssrc-group", "rtp-stream-id", "sdes:mid")
    out = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            out.append(line.split(" ")[0])
        elif line.startswith(keys[:3]) or any(k in line for k in keys[3:]):
            out.append(line)
    return out


def log(msg: str):
    print(f"[simulcast {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def until(secs: float, what: str, sample, check):
    """Calls `sample()` about every 0.3 s until `check(figures)` is truthy (returned with the
    figures); raises Failed after `secs` with the last figures."""
    deadline = time.monotonic() + secs
    while True:
        figures = sample()
        done = check(figures)
        if done:
            return done, figures
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {secs:.0f} s; last figures: {json.dumps(figures)[:4000]}")
        time.sleep(0.3)


def main() -> int:
    http, stream, region = sys.argv[1:]
    page = http + "/"
    report = {"ok": False}
    drv = browser(fake_fps=30)
    windows = []
    try:
        drv.set_script_timeout(30)

        # The publisher.
        pub = Window(drv, page, "publisher", first=True)
        windows.append(pub)
        published_at = time.monotonic()
        r = pub.call("publish", f"{http}/whip/{stream}?region={region}")
        report["publisher"] = {
            "location": r["location"],
            "rids": r["rids"],
            "settings": {k: r["settings"].get(k) for k in ("width", "height", "frameRate")},
            "offer_simulcast": simulcast_lines(r["offer"]),
            "answer_simulcast": simulcast_lines(r["answer"]),
        }
        log(f"publishing: {json.dumps(report['publisher'])}")

        # Viewer 1 at most 180 lines high, viewer 2 without a limit.
        v1 = Window(drv, page, "viewer 1")
        windows.append(v1)
        v1_at = time.monotonic()
        r1 = v1.call("play", f"{http}/whep/{stream}?region={region}&max_height=180")
        v2 = Window(drv, page, "viewer 2")
        windows.append(v2)
        r2 = v2.call("play", f"{http}/whep/{stream}?region={region}")
        report["viewers"] = [
            {"location": r["location"], "answer_ssrcs": [x for x in r["answer"].splitlines() if " cname:" in x]}
            for r in (r1, r2)
        ]

        # Viewer 1 decodes the q layer, frames rising.
        v1_max = {"width": 0}  # the widest frame viewer 1 decoded before its limit was lifted
        low_from = {}

        def low(s):
            v1_max["width"] = max(v1_max["width"], width(s))
            if s.get("dtlsState") != "connected" or not 0 < width(s) <= 320:
                return None
            low_from.setdefault("frames", decoded(s))
            return decoded(s) >= low_from["frames"] + FRAMES

        _, s1 = until(LOW_SECS - (time.monotonic() - v1_at), "viewer 1 decoding the q layer", v1.stats, low)
        report["low"] = {"secs": round(time.monotonic() - v1_at, 1), "viewer": s1}
        log(f"viewer 1 on q: {json.dumps(video(s1))}")

        # The publisher sends its top layer, viewer 2 decodes it; viewer 1 stays on q and goes
        # on decoding it.
        top_from = {}
        prev_f = {"bytes": 0}
        v1_from = decoded(s1)

        def layers(figures):
            p, a, b = figures["publisher"], figures["viewer 1"], figures["viewer 2"]
            v1_max["width"] = max(v1_max["width"], width(a))
            f = layer(p, "f")
            sending = f.get("frameWidth") == 1280 and (f.get("bytesSent") or 0) > prev_f["bytes"] > 0
            prev_f["bytes"] = f.get("bytesSent") or 0
            if width(b) != 1280 or b.get("dtlsState") != "connected":
                return None
            top_from.setdefault("frames", decoded(b))
            return sending and decoded(b) >= top_from["frames"] + FRAMES and decoded(a) >= v1_from + FRAMES

        def all_stats():
            return {w.name: w.stats() for w in windows}

        _, figures = until(
            LAYERS_SECS - (time.monotonic() - published_at),
            "the publisher sending its top layer, viewer 2 decoding it, viewer 1 still decoding q",
            all_stats,
            layers,
        )
        report["layers"] = {
            "secs": round(time.monotonic() - published_at, 1),
            "publisher": figures["publisher"],
            "viewer1": figures["viewer 1"],
            "viewer2": figures["viewer 2"],
        }
        log(f"top layer: {json.dumps(figures['publisher']['layers'])}; viewer 2 {json.dumps(video(figures['viewer 2']))}")

        # Lift viewer 1's limit: it switches to the top layer.
        before = v1.stats()
        v1_max["width"] = max(v1_max["width"], width(before))
        report["v1_max_width_before_patch"] = v1_max["width"]
        patched_at = time.monotonic()
        report["patch"] = v1.call("patch", "?max_height=0")
        log(f"PATCH ?max_height=0: {json.dumps(report['patch'])}")
        if not 200 <= report["patch"]["status"] < 300:
            raise Failed(f"PATCH {r1['location']}?max_height=0: {report['patch']}")
        widths = []  # the distinct widths viewer 1 decoded, in order, from the PATCH on
        switched = {}

        def top(s):
            if not widths or widths[-1] != width(s):
                widths.append(width(s))
            if width(s) == 1280:
                switched.setdefault("secs", round(time.monotonic() - patched_at, 1))
                switched.setdefault("frames", decoded(s))
            return "frames" in switched

        until(SWITCH_SECS, "viewer 1 decoding the top layer after the PATCH", v1.stats, top)

        # ... and goes on decoding it.
        def settled(s):
            if not widths or widths[-1] != width(s):
                widths.append(width(s))
            return width(s) == 1280 and decoded(s) >= switched["frames"] + 2 * FRAMES

        _, after = until(8, "viewer 1 going on with the top layer", v1.stats, settled)
        report["switch"] = {
            "secs": switched["secs"],
            "widths": widths,
            "before": before,
            "after": after,
        }
        log(f"viewer 1 switched in {switched['secs']} s through {widths}: {json.dumps(video(after))}")

        # Viewer 2 still decodes the top layer.
        second_from = decoded(v2.stats())
        # (Within 30 s: on a loaded 2-core machine its delay-based estimate may dip, take it a
        # layer down, and climb back after the 8 s quiet time and a probe.)
        _, s2 = until(
            30,
            "viewer 2 going on with the top layer",
            v2.stats,
            lambda s: width(s) == 1280 and decoded(s) >= second_from + FRAMES,
        )
        report["second"] = s2
        report["publisher"]["final"] = pub.stats()
        report["ok"] = True
        return 0
    except Exception as e:  # noqa: BLE001 - report whatever failed, then fail
        report["error"] = str(e)[:6000]
        log(f"failed: {report['error']}")
        try:  # everyone's figures at the failure
            report["last"] = {w.name: w.stats() for w in windows}
            log(f"last figures: {json.dumps(report['last'])}")
        except Exception:  # noqa: BLE001 - best effort
            pass
        return 1
    finally:
        close(drv, windows)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    sys.exit(main())
