#!/usr/bin/env bash
# Live-stream demo (part of `make run`): a control plane and four bridges (eu-1, eu-2, us-1,
# us-2) on loopback. A viewer joins before the publisher and waits; the publisher joins and its
# bridge becomes the origin; viewers join from eu and us and land on edges near them, each edge
# pulling the stream once on its first viewer (the origin feeds at most 2 edges here, so a
# third edge pulls from an edge: a second tier). The publisher sends RTP: every viewer gets
# every packet; seven viewers ask for a keyframe at once and the publisher sees one PLI. The
# last viewer of an edge leaves and its pull goes. Everything runs from target/release.
source "$(dirname "$0")/lib.sh"

ready listen "$bin/ringbridge-control" serve --listen 127.0.0.1:0 --http 127.0.0.1:0 --data-dir "$data/store" \
  --stream-fanout 2 --max-viewers-per-edge 3
url=http://$REPLY
echo "control plane at $url (--stream-fanout 2 --max-viewers-per-edge 3)"
for b in eu-1:eu eu-2:eu us-1:us us-2:us; do
  ready media "$bin/ringbridge" --engine auto --workers 1 --no-pin --media 127.0.0.1:0 --api 127.0.0.1:0 \
    --control "$url" --bridge-id "${b%%:*}" --region "${b##*:}"
done
sleep 0.5
ctl() { echo "\$ ringbridge-control $*"; "$bin/ringbridge-control" --control "$url" "$@"; }
quiet() { "$bin/ringbridge-control" --control "$url" "$@" >/dev/null; }
ctl bridges
echo "--- a viewer before the publisher: placed on an edge, it waits"
ctl join --conference launch --participant v1 --role viewer --region eu --remote-addr 127.0.0.1:42001
ctl conferences
echo "--- the publisher joins: its bridge is the origin; the waiting edge pulls from it"
ctl join --conference launch --participant stage --role publisher --region eu --ssrc 7000 --remote-addr 127.0.0.1:42000
echo "--- six more viewers (2 eu, 4 us), at most 3 per edge"
for v in 2:eu 3:eu 4:us 5:us 6:us 7:us; do
  quiet join --conference launch --participant "v${v%%:*}" --role viewer --region "${v##*:}" \
    --remote-addr "127.0.0.1:4200${v%%:*}"
done
ctl conferences
origin_media=$("$bin/ringbridge-control" --control "$url" --json conferences |
  python3 -c "import json,sys; c=json.load(sys.stdin)[0]; print([b['media_addr'] for b in c['bridges'] if b['bridge_id']==c['stream']['origin']][0])")
edges=$("$bin/ringbridge-control" --control "$url" --json conferences |
  python3 -c "import json,sys; c=json.load(sys.stdin)[0]; print(' '.join(p+'='+b['media_addr'] for b in c['bridges'] for p in b['participants']))")
echo "--- the publisher sends 20 RTP packets to the origin ($origin_media); then v1..v7 all ask for a keyframe at once"
if ! python3 - "$origin_media" "$edges" <<'PY'
import socket, struct, sys, time
host, port = sys.argv[1].rsplit(":", 1)
media = dict(kv.split("=") for kv in sys.argv[2].split())
def sock(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", port)); s.settimeout(0.5); return s
def count(s):  # datagrams arriving until 0.5 s of silence
    n = 0
    try:
        while True:
            s.recv(2048); n += 1
    except socket.timeout:
        return n
stage = sock(42000)
viewers = {f"v{i}": sock(42000 + i) for i in range(1, 8)}
for seq in range(20):
    stage.sendto(struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, 7000) + b"live", (host, int(port)))
    time.sleep(0.002)
for name, s in viewers.items():
    print(f"    {name} received {count(s)} of 20 packets")
# The edges asked for a keyframe for their viewers (who joined before any media) when the first
# packets arrived: the publisher got that request once, whatever the number of edges.
print(f"    the edges asked for a keyframe for their new viewers: the publisher got {count(stage)} PLI")
# Each viewer sends a PLI (RFC 4585: PT 206, FMT 1) about the publisher's SSRC to its edge.
for i, (name, s) in enumerate(viewers.items()):
    h, p = media[name].rsplit(":", 1)
    s.sendto(struct.pack("!BBHII", 0x81, 206, 2, 9000 + i, 7000), (h, int(p)))
print(f"    7 viewers asked for a keyframe at once: the publisher got {count(stage)} PLI (one per 500 ms per stream)")
PY
then echo "    (media check skipped: ports 42000-42007 busy)"; fi
echo "--- the us viewers leave one by one: an edge stops pulling with its last viewer"
for v in 7 6 5 4; do quiet leave --conference launch --participant "v$v"; done
ctl conferences
