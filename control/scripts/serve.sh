#!/usr/bin/env bash
# `make serve`: a control plane with its WebRTC page on http://127.0.0.1:8080/ (HTTP=ADDR to
# change it) and two bridges (regions eu and us) on loopback, until Ctrl-C. Open the page in a
# browser on this machine: publish the camera to a stream, play it in another tab.
source "$(dirname "$0")/lib.sh"

http=${HTTP:-127.0.0.1:8080}
ready listen "$bin/ringbridge-control" serve --listen 127.0.0.1:0 --http "$http" --data-dir "$data/store"
url=http://$REPLY
for b in eu-1:eu us-1:us; do
  ready media "$bin/ringbridge" --media 127.0.0.1:0 --api 127.0.0.1:0 --control "$url" \
    --bridge-id "${b%%:*}" --region "${b##*:}"
  echo "bridge ${b%%:*} (${b##*:}) media $REPLY"
done
echo "control plane (gRPC) at $url"
echo "WebRTC page: http://$http/  (WHIP: POST /whip/STREAM, WHEP: POST /whep/STREAM; Ctrl-C stops)"
echo "Room page:   http://$http/room/demo  (open it in two tabs or more; docs/rooms.md)"
wait
