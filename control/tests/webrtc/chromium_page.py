"""ringbridge's page in headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

One tab publishes Chromium's fake camera and microphone with WHIP; two tabs play the stream with
WHEP. Each player's getStats() must show framesDecoded past 60 with DTLS connected. Then the
script prints READY (with the players' figures) and waits for a line on stdin (the harness kills
the players' edge); each player must recover by itself (the page DELETEs and re-POSTs) and decode
60 more frames. Prints one JSON line per phase; exits 1 on failure.

Usage: chromium_page.py PAGE_URL STREAM PUBLISHER_REGION VIEWER_REGION
"""

import json
import sys
import time

from chrome import browser


def stats(drv, handle) -> dict:
    drv.switch_to.window(handle)
    return drv.execute_script("return window.ringbridge.stats();") or {}


def frames(s: dict) -> int:
    return int(s.get("framesDecoded") or 0)


def wait_frames(drv, handles, above: dict, more: int, secs: float) -> dict:
    deadline = time.monotonic() + secs
    last = {}
    while time.monotonic() < deadline:
        last = {h: stats(drv, h) for h in handles}
        if all(
            frames(last[h]) >= above.get(h, 0) + more and last[h].get("dtlsState") == "connected"
            for h in handles
        ):
            return last
        time.sleep(0.5)
    raise RuntimeError(f"players stuck: {json.dumps(last)}")


def main() -> int:
    page, stream, pub_region, viewer_region = sys.argv[1:]
    drv = browser()
    try:
        drv.set_script_timeout(30)
        drv.get(page)
        pub = drv.current_window_handle
        drv.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "window.ringbridge.publish(arguments[0], arguments[1]).then(() => done(true),"
            " e => done(String(e)));",
            stream,
            pub_region,
        )
        players = []
        for _ in range(2):
            drv.switch_to.new_window("tab")
            drv.get(page)
            r = drv.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "window.ringbridge.play(arguments[0], arguments[1]).then(() => done(true),"
                " e => done(String(e)));",
                stream,
                viewer_region,
            )
            if r is not True:
                raise RuntimeError(f"play: {r}")
            players.append(drv.current_window_handle)
        before = wait_frames(drv, players, {}, 60, 60)
        print(json.dumps({"phase": "ready", "players": list(before.values())}), flush=True)
        sys.stdin.readline()  # the harness killed the players' edge
        base = {h: frames(before[h]) for h in players}
        # The old PeerConnection's counter may restart at 0 on the new one: count from there.
        restarted = {h: 0 for h in players}
        deadline = time.monotonic() + 90
        while True:
            now = {h: stats(drv, h) for h in players}
            for h in players:
                if frames(now[h]) < base[h]:
                    base[h] = 0
                    restarted[h] = 1
            if all(
                frames(now[h]) >= base[h] + 60 and now[h].get("dtlsState") == "connected"
                for h in players
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"players did not recover: {json.dumps(now)}")
            time.sleep(0.5)
        print(json.dumps({"phase": "recovered", "players": list(now.values())}), flush=True)
        stats(drv, pub)
        return 0
    except Exception as e:  # noqa: BLE001 - report whatever failed, then fail
        print(json.dumps({"phase": "error", "error": str(e)[:2000]}), flush=True)
        return 1
    finally:
        drv.quit()


if __name__ == "__main__":
    sys.exit(main())
