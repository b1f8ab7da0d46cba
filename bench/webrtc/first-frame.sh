#!/usr/bin/env bash
# Time from POST /whep to the first decoded frame (bench/webrtc/whep_first_frame.py) against a
# real control plane and two bridges on loopback, all release builds from target/release:
# `ringbridge-control serve` (gRPC and HTTP on free ports), an origin bridge in region eu and an
# edge bridge in region us (ENGINE, default auto; one unpinned worker each). The aiortc publisher
# publishes to eu, the viewers play from us, so they land on the edge, which pulls from the
# origin. Arguments go to the Python script (e.g. --viewers 50 --batch 1 --json FILE);
# BRIDGE_ARGS are added to both bridges' command lines (e.g. "--keyframe-interval-ms 0").
# Needs the test venv (make .venv/.ready) or PYTHON pointing at a Python with aiortc.
# Everything is bounded: the script's own --deadline, and `timeout` around it.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${BIN:-target/release}
python=${PYTHON:-.venv/bin/python}
engine=${ENGINE:-auto}
data=$(mktemp -d)
pids=()
cleanup() {
  kill -INT "${pids[@]}" 2>/dev/null || true # INT: bridges stop at once (TERM would drain)
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

# start NAME CMD...: runs CMD in the background and waits (5 s at most) for its ready line,
# which it leaves in $data/NAME.
start() {
  local name=$1; shift
  RUST_LOG=error "$@" >"$data/$name" 2>"$data/$name.err" &
  pids+=($!)
  for _ in $(seq 100); do grep -q ready "$data/$name" && return; sleep 0.05; done
  echo "$name did not start: $(cat "$data/$name.err")" >&2
  exit 1
}
field() { grep -o "$2=[^ ]*" "$data/$1" | cut -d= -f2; }

start control "$bin/ringbridge-control" serve --listen 127.0.0.1:0 --http 127.0.0.1:0 \
  --data-dir "$data/store" --report-interval-ms 200
url=http://$(field control listen)
http=http://$(field control http)
for b in origin:eu edge:us; do
  start "${b%%:*}" "$bin/ringbridge" --engine "$engine" --workers 1 --no-pin \
    --media 127.0.0.1:0 --api 127.0.0.1:0 --control "$url" \
    --bridge-id "${b%%:*}" --region "${b##*:}" ${BRIDGE_ARGS:-}
done
# Both registered and up before the first POST.
for _ in $(seq 100); do
  up=$("$bin/ringbridge-control" --control "$url" --json bridges | grep -o '"state": *"up"' | wc -l)
  [ "$up" -ge 2 ] && break
  sleep 0.1
done
echo "control $url http $http; origin $(field origin media) (eu), edge $(field edge media) (us)," \
  "engine $(field origin engine) ${BRIDGE_ARGS:-}"
timeout 600 "$python" bench/webrtc/whep_first_frame.py "$http" "$@"
