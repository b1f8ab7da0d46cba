#!/usr/bin/env bash
# Autoscaler demo (part of `make run`), with compressed times: a control plane with the process
# actuator starts its minimum fleet; RTP load rises and a bridge is added (a new conference lands
# on it); load falls, and after the scale-down window the bridge with the fewest participants
# drains, its participants move (announced), and it is stopped. Bounded: about 30 s.
source "$(dirname "$0")/lib.sh"

RUST_LOG=${RUST_LOG:-ringbridge_control=info} "$bin/ringbridge-control" serve --listen 127.0.0.1:0 --http 127.0.0.1:0 \
  --data-dir "$data/store" --report-interval-ms 250 \
  --autoscale process --autoscale-interval-ms 500 --min-bridges 1 --max-bridges 4 \
  --target-utilization 0.5 --scale-up-period-ms 500 --scale-down-window-ms 4000 \
  --scale-down-period-ms 2000 --drain-grace-ms 2000 --bridge-capacity-pps 4000 \
  --bridge-arg=--workers --bridge-arg=1 --bridge-arg=--no-pin >"$data/out" 2>"$data/log" &
pids+=($!)
for _ in $(seq 100); do grep -q ready "$data/out" && break; sleep 0.05; done
url=http://$(grep -o "listen=[^ ]*" "$data/out" | cut -d= -f2)
echo "control plane at $url, autoscaler on (process actuator; HPA target 0.5, 4 s scale-down window)"
ctl() { echo "\$ ringbridge-control $*"; "$bin/ringbridge-control" --control "$url" "$@"; }
count() { "$bin/ringbridge-control" --control "$url" --json bridges | grep -o '"state":"up"' | wc -l; }
for _ in $(seq 100); do [ "$(count)" -ge 1 ] && break; sleep 0.1; done
ctl bridges
for p in 1 2 3; do
  "$bin/ringbridge-control" --control "$url" join --conference rush --participant "r$p" --ssrc "$p" \
    --remote-addr "127.0.0.1:4210$p" >/dev/null
done
media=$("$bin/ringbridge-control" --control "$url" --json conferences |
  python3 -c "import json,sys; print(json.load(sys.stdin)[0]['media_addr'])")
echo "--- load rises: r1 sends ~1000 RTP packets/s to $media (3000 pps in + out vs 4000 capacity)"
python3 - "$media" "$data/light" <<'PY' &
import os, socket, struct, sys, time
host, port = sys.argv[1].rsplit(":", 1)
socks = []
for p in (1, 2, 3):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 42100 + p)); s.setblocking(False)
    socks.append(s)
seq, start = 0, time.time()
while time.time() - start < 30:  # bounded
    light = os.path.exists(sys.argv[2])
    socks[0].sendto(struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq * 90, 1) + b"x" * 160, (host, int(port)))
    seq += 1
    for s in socks[1:]:
        try:
            while True: s.recv(2048)
        except BlockingIOError:
            pass
    time.sleep(0.05 if light else 0.001)
PY
pids+=($!)
for i in $(seq 40); do # bounded: 20 s
  [ "$(count)" -ge 2 ] && break; sleep 0.5
done
echo "    fleet grew to $(count) bridges"
ctl autoscaler | head -3
"$bin/ringbridge-control" --control "$url" join --conference late --participant l1 --ssrc 9 \
  --remote-addr 127.0.0.1:42109 >/dev/null
echo "--- a new conference lands on the new bridge:"
ctl bridges
echo "--- load falls: r1 slows to 20 packets/s; after the window the emptiest bridge drains and goes"
touch "$data/light"
for i in $(seq 60); do # bounded: 30 s
  n=$("$bin/ringbridge-control" --control "$url" --json bridges | python3 -c "import json,sys; print(len(json.load(sys.stdin)))")
  [ "$n" -le 1 ] && break
  sleep 0.5
done
grep -E "autoscaler|participants moved|removed" "$data/log" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^[^ ]* *//' | cut -c1-160
ctl bridges
ctl conferences
ctl autoscaler
