"""A simulcast viewer behind a rate-limited link (tests/simulcast_shaped.rs).

Headless Chromium (in this, the host's, network namespace) publishes its fake camera at 1280x720
in three simulcast encodings over WHIP (the window code of simulcast_chromium.py: rids q, h, f at
150 kbit/s, 500 kbit/s, 1.5 Mbit/s). A second headless Chromium plays the stream over WHEP from
another network namespace, behind the test's veth link; its receive side runs libwebrtc's
delay-based estimator and sends REMB to the bridge, which picks the viewer's layer from it (and
from the losses in its receiver reports).

Once the viewer decodes the top layer (1280 wide), each cycle:
- shapes the link towards the viewer to RATE with a token bucket (`tc qdisc ... tbf`; netem is
  missing on the kernels we run on) and measures how long until the viewer decodes a layer that
  fits (at most 320 wide: q) and stays there (HOLD_SECS with nothing wider decoded);
- lifts the limit and measures how long until it decodes the top layer again.

Every wait is bounded. Prints one JSON report on stdout: per cycle `settle_secs`, `climb_secs`,
the widths decoded and the viewer's figures over time; exits 1 when a phase did not complete (the
report says which).

Usage:
  simulcast_shaped.py run HTTP_BASE STREAM NETNS SHAPED_IF CYCLES
  simulcast_shaped.py view HTTP_BASE STREAM      (the viewer, run by `run` in NETNS)
"""

import json
import subprocess
import sys
import threading
import time


# The link's rate while shaped, and the token bucket's burst and queue (tbf's `latency`: how
# long a packet may wait for tokens before it is dropped). `netem rate` queues up to 1000
# packets; a 1 s queue is the closest tbf here, and keeps a keyframe's burst (the bridge does not
# pace) from being cut off by a shallow queue.
RATE = "300kbit"
BURST = "8kb"
QUEUE_LATENCY = "1s"
# The widest layer that fits RATE (q: 320x180 at 150 kbit/s) and the top layer's width.
FITS_WIDTH = 320
TOP_WIDTH = 1280
# Frames the viewer must decode at a width for it to count as reached.
FRAMES = 30
# Bounds: the viewer decoding the top layer after the publish (Chromium's sender ramps up its
# layers first), a layer that fits after shaping, the top layer after the limit is lifted.
TOP_SECS = 60
SETTLE_SECS = 20
CLIMB_SECS = 60
# After settling, the viewer must stay on a layer that fits for this long (still shaped; the
# bridge tries no step up within 8 s of a step down).
HOLD_SECS = 5
REGION = "eu"
VIEWER_EXIT_SECS = 10


def log(msg: str) -> None:
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}"
    print(f"[shaped {stamp}] {msg}", file=sys.stderr, flush=True)


class Failed(Exception):
    """A phase did not complete."""


# --- viewer (in the namespace) ---------------------------------------------------------------


def view(base: str, stream: str) -> int:
    """Plays the stream in its own headless Chromium (started in this, the viewer's, namespace);
    prints a JSON line every 0.25 s: {"t", "w" (frame width), "frames" (decoded), "bytes",
    "keyframes", "lost", "nacks", "freezes"}; ends on "stop" or EOF on stdin (or the bound)."""
    from chrome import browser
    from simulcast_chromium import Window, close, video

    drv = browser(secure_origin=base)
    stop = threading.Event()

    def wait_stdin():
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    w = None
    try:
        drv.set_script_timeout(30)
        w = Window(drv, base + "/", "viewer", first=True)
        w.call("play", f"{base}/whep/{stream}?region={REGION}")
        deadline = time.monotonic() + TOP_SECS + 10 * (SETTLE_SECS + HOLD_SECS + CLIMB_SECS)
        while not stop.is_set() and time.monotonic() < deadline:
            v = video(w.stats())
            print(
                json.dumps(
                    {
                        "t": round(time.monotonic(), 3),
                        "w": int(v.get("frameWidth") or 0),
                        "frames": int(v.get("framesDecoded") or 0),
                        "bytes": int(v.get("bytesReceived") or 0),
                        "keyframes": int(v.get("keyFramesDecoded") or 0),
                        "lost": int(v.get("packetsLost") or 0),
                        "nacks": int(v.get("nackCount") or 0),
                        "freezes": int(v.get("freezeCount") or 0),
                    }
                ),
                flush=True,
            )
            stop.wait(0.25)
        return 0
    finally:
        close(drv, [w] if w is not None else [])


# --- driver (on the host) --------------------------------------------------------------------


class Watch:
    """What the viewer printed, read on a thread: its figures every 0.25 s, and the width
    changes among them."""

    def __init__(self, proc: subprocess.Popen):
        self.lock = threading.Lock()
        self.changes: list[dict] = []  # the first tick at each new width
        self.ticks: list[dict] = []
        threading.Thread(target=self.read, args=(proc.stdout,), daemon=True).start()

    def read(self, out) -> None:
        for line in out:
            try:
                x = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.ticks.append(x)
                if x["w"] and (not self.changes or self.changes[-1]["w"] != x["w"]):
                    self.changes.append(x)

    def last(self) -> dict:
        with self.lock:
            return dict(self.ticks[-1]) if self.ticks else {"frames": 0, "w": 0}

    def since(self, t: float) -> list[dict]:
        """Width changes after monotonic time `t`, with the width in force at `t` first."""
        with self.lock:
            before = [c for c in self.changes if c["t"] <= t]
            after = [c for c in self.changes if c["t"] > t]
        return ([dict(before[-1], t=t)] if before else []) + after

    def figures(self, t0: float, t1: float) -> list[list]:
        """[seconds after t0, width, frames, keyframes, lost, nacks, freezes] between t0, t1."""
        with self.lock:
            return [
                [round(x["t"] - t0, 2), x["w"], x["frames"], x["keyframes"], x["lost"], x["nacks"], x["freezes"]]
                for x in self.ticks
                if t0 <= x["t"] <= t1
            ]


def reached(watch: Watch, t: float, ok, frames: int = FRAMES):
    """The time of the width change after `t` from which every decoded frame's width satisfies
    `ok` and at least `frames` were decoded (None if not yet)."""
    changes = watch.since(t)
    last = watch.last()
    if not changes or not ok(changes[-1]["w"]):
        return None
    start = changes[-1]
    if last["frames"] - start["frames"] < frames or last["w"] != start["w"]:
        return None
    return start["t"]


def until(secs: float, what: str, check):
    deadline = time.monotonic() + secs
    while True:
        r = check()
        if r is not None:
            return r
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {secs} s")
        time.sleep(0.1)


def tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True)


def run(base: str, stream: str, netns: str, shaped_if: str, cycles: str) -> int:
    from chrome import browser
    from simulcast_chromium import Window, close

    report: dict = {"ok": False, "rate": RATE, "cycles": []}
    drv = browser(fake_fps=30, secure_origin=base)
    viewer = None
    windows = []
    try:
        drv.set_script_timeout(30)
        pub = Window(drv, base + "/", "publisher", first=True)
        windows.append(pub)
        published_at = time.monotonic()
        r = pub.call("publish", f"{base}/whip/{stream}?region={REGION}")
        report["rids"] = r["rids"]
        log(f"publishing {r['rids']}")
        viewer = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, __file__, "view", base, stream],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        watch = Watch(viewer)
        top = lambda w: w == TOP_WIDTH  # noqa: E731
        fits = lambda w: 0 < w <= FITS_WIDTH  # noqa: E731
        at = until(TOP_SECS, "the viewer decoding the top layer", lambda: reached(watch, published_at, top))
        report["top_secs"] = round(at - published_at, 1)
        log(f"viewer on the top layer after {report['top_secs']} s")
        for i in range(int(cycles)):
            cycle: dict = {}
            report["cycles"].append(cycle)
            t0 = time.monotonic()
            tc("qdisc", "replace", "dev", shaped_if, "root", "tbf", "rate", RATE, "burst", BURST, "latency", QUEUE_LATENCY)
            log(f"cycle {i}: shaped to {RATE}")
            settled = until(SETTLE_SECS, f"cycle {i}: the viewer on a layer that fits {RATE}", lambda: reached(watch, t0, fits))
            cycle["settle_secs"] = round(settled - t0, 2)
            log(f"cycle {i}: shaped; on a layer that fits after {cycle['settle_secs']} s")
            time.sleep(max(0.0, settled + HOLD_SECS - time.monotonic()))
            held = watch.since(settled)
            cycle["held"] = all(fits(c["w"]) for c in held)
            cycle["hold_frames"] = watch.last()["frames"] - held[0]["frames"]
            cycle["widths_shaped"] = [c["w"] for c in watch.since(t0)]
            cycle["shaped"] = watch.figures(t0, time.monotonic())
            t1 = time.monotonic()
            tc("qdisc", "del", "dev", shaped_if, "root")
            log(f"cycle {i}: limit lifted")
            climbed = until(CLIMB_SECS, f"cycle {i}: the viewer back on the top layer", lambda: reached(watch, t1, top))
            cycle["climb_secs"] = round(climbed - t1, 2)
            cycle["widths_lifted"] = [c["w"] for c in watch.since(t1)]
            cycle["lifted"] = watch.figures(t1, time.monotonic())
            log(f"cycle {i}: lifted; top layer after {cycle['climb_secs']} s via {cycle['widths_lifted']}")
        report["ok"] = True
        return 0
    except Exception as e:  # noqa: BLE001 - report whatever failed, then fail
        report["error"] = str(e)[:4000]
        if viewer is not None:
            report["ticks"] = watch.figures(published_at, time.monotonic())[-120:]
        log(f"failed: {report['error']}")
        return 1
    finally:
        try:
            tc("qdisc", "del", "dev", shaped_if, "root")
        except subprocess.CalledProcessError:
            pass  # not shaped
        if viewer is not None:
            try:
                viewer.stdin.write("stop\n")
                viewer.stdin.flush()
                viewer.wait(VIEWER_EXIT_SECS)
            except Exception:  # noqa: BLE001 - best effort
                viewer.kill()
            report["viewer_exit"] = viewer.returncode
            report["viewer_changes"] = watch.changes[-40:] if viewer else []
        close(drv, windows)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "run":
        sys.exit(run(*args))
    elif mode == "view":
        sys.exit(view(*args))
    sys.exit(f"unknown mode {mode!r}")
