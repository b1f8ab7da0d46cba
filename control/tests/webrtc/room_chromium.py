"""A ringbridge room in headless Chromium (Debian's chromium + chromium-driver, via selenium).

Tabs A and B join from region eu, C from us: each must decode the two others' video
(framesDecoded rising) and play their audio (totalSamplesReceived rising). D joins from us:
everyone gets its stream. B leaves: its tracks end everywhere. Then the script prints a "ready"
line and waits for a line on stdin (the harness kills the us bridge): C and D must be moved and
every remaining tab must again decode both others. One JSON line per phase; exits 1 on failure.

Usage: room_chromium.py ROOM_PAGE_URL
"""

import json
import sys
import time

from chrome import browser


class Room:
    def __init__(self, drv, url):
        self.drv = drv
        self.url = url
        self.tabs = {}  # name -> window handle
        self.ids = {}  # name -> publish session id

    def join(self, name, region):
        if self.tabs:
            self.drv.switch_to.new_window("tab")
        self.drv.get(self.url)
        r = self.drv.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "window.room.join(arguments[0]).then(id => done({id}), e => done({error: String(e)}));",
            region,
        )
        if "id" not in r:
            raise RuntimeError(f"{name} join: {r}")
        self.tabs[name] = self.drv.current_window_handle
        self.ids[name] = r["id"]

    def leave(self, name):
        self.drv.switch_to.window(self.tabs.pop(name))
        self.drv.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "window.room.leave().then(() => done(true), e => done(String(e)));"
        )
        self.drv.close()
        self.drv.switch_to.window(next(iter(self.tabs.values())))

    def stats(self, name):
        self.drv.switch_to.window(self.tabs[name])
        return self.drv.execute_script("return window.room.stats();") or {}

    def snapshot(self):
        return {n: self.stats(n) for n in self.tabs}


def decoding(s: dict, base: dict, frames: int) -> list:
    """Publishers this tab decodes video and plays audio of, past `base`'s figures."""
    out = []
    for pub, f in (s.get("watches") or {}).items():
        b = (base.get("watches") or {}).get(pub, {})
        if (
            f.get("dtlsState") == "connected"
            and f.get("framesDecoded", 0) >= b.get("framesDecoded", 0) + frames
            and f.get("totalSamplesReceived", 0) > b.get("totalSamplesReceived", 0) + 8000
        ):
            out.append(pub)
    return sorted(out)


def wait_all(room: Room, want, frames: int, secs: float, base=None, stale=()) -> dict:
    """Until each tab decodes exactly the publishers `want(name, stats)` names, and no tab's view
    of the room lists a `stale` publish session any more."""
    base = base or {}
    deadline = time.monotonic() + secs
    last = {}
    while time.monotonic() < deadline:
        last = room.snapshot()
        listed = {p["session"] for s in last.values() for p in (s.get("view") or {}).get("publishers", [])}
        if not listed & set(stale) and all(
            decoding(last[n], base.get(n, {}), frames) == sorted(want(n, last[n]))
            for n in room.tabs
        ):
            return last
        time.sleep(0.5)
    summary = {
        n: {
            "me": last[n].get("me"),
            "want": sorted(want(n, last[n])),
            "decoding": decoding(last[n], base.get(n, {}), frames),
            "publishers": [p["session"] for p in (last[n].get("view") or {}).get("publishers", [])],
            "watches": {
                p: [f.get("session"), f.get("connectionState"), f.get("dtlsState"), f.get("framesDecoded"),
                    f.get("totalSamplesReceived"), f.get("renewals")]
                for p, f in (last[n].get("watches") or {}).items()
            },
        }
        for n in last
    }
    raise RuntimeError("tabs stuck: " + json.dumps(summary))


def others(room: Room):
    """Every other tab's current publish session."""

    def want(name, s):
        mine = s.get("me")
        return [p["session"] for p in (s.get("view") or {}).get("publishers", []) if p["session"] != mine]

    return want


def main() -> int:
    url = sys.argv[1]
    drv = browser()
    try:
        drv.set_script_timeout(30)
        room = Room(drv, url)
        room.join("A", "eu")
        room.join("B", "eu")
        room.join("C", "us")
        three = wait_all(room, lambda n, s: [room.ids[m] for m in room.tabs if m != n], 30, 90)
        print(json.dumps({"phase": "three", "tabs": {n: decoding(three[n], {}, 30) for n in three}}), flush=True)
        room.join("D", "us")
        four = wait_all(room, lambda n, s: [room.ids[m] for m in room.tabs if m != n], 30, 90, three)
        print(json.dumps({"phase": "four", "tabs": {n: decoding(four[n], three.get(n, {}), 30) for n in four}}), flush=True)
        gone = room.ids["B"]
        room.leave("B")
        deadline = time.monotonic() + 30
        while True:
            s = room.snapshot()
            if all(gone in (s[n].get("ended") or []) and gone not in (s[n].get("watches") or {}) for n in s):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("B's tracks did not end: " + json.dumps(s)[:3000])
            time.sleep(0.5)
        print(json.dumps({"phase": "ready", "ids": room.ids}), flush=True)
        sys.stdin.readline()  # the harness killed the us bridge
        # C and D publish again from a new bridge (new sessions); every tab must decode the
        # current publish sessions of both others, on connections made after the kill.
        recovered = wait_all(room, others(room), 30, 120, stale=(room.ids["C"], room.ids["D"]))
        for n in recovered:
            if len((recovered[n].get("view") or {}).get("publishers", [])) != 3:
                raise RuntimeError("publishers after the kill: " + json.dumps(recovered[n])[:2000])
        print(
            json.dumps({"phase": "recovered", "tabs": {n: decoding(recovered[n], {}, 30) for n in recovered}}),
            flush=True,
        )
        return 0
    except Exception as e:  # noqa: BLE001 - report whatever failed, then fail
        print(json.dumps({"phase": "error", "error": str(e)[:3000]}), flush=True)
        return 1
    finally:
        drv.quit()


if __name__ == "__main__":
    sys.exit(main())
