#!/usr/bin/env bash
# Control-plane demo (part of `make run`): a control plane and two bridges in two regions on
# loopback; participants join through the control plane's CLI; one bridge is killed and its
# conference moves. Everything runs from target/release and is stopped on exit.
set -euo pipefail
bin=${BIN:-target/release}
data=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT

ready() { # start a process in the background, wait for its ready line, set REPLY to a field of it
  local field=$1; shift
  local out="$data/out.$#.$RANDOM"
  RUST_LOG=error "$@" >"$out" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 100); do grep -q ready "$out" && break; sleep 0.05; done
  REPLY=$(grep -o "$field=[^ ]*" "$out" | cut -d= -f2)
}

ready listen "$bin/ringbridge-control" serve --listen 127.0.0.1:0 --data-dir "$data/store" --report-interval-ms 300
url=http://$REPLY
echo "control plane at $url"
for b in eu-1:eu us-1:us; do
  ready media "$bin/ringbridge" --engine auto --workers 1 --no-pin --media 127.0.0.1:0 --api 127.0.0.1:0 \
    --control "$url" --bridge-id "${b%%:*}" --region "${b##*:}"
done
sleep 0.5
ctl() { echo "\$ ringbridge-control $*"; "$bin/ringbridge-control" --control "$url" "$@"; }
ctl bridges
ctl join --conference standup --participant ana --region eu --ssrc 1 --remote-addr 127.0.0.1:41001
ctl join --conference standup --participant ben --region us --ssrc 2 --remote-addr 127.0.0.1:41002
ctl join --conference webinar --participant cho --region us --ssrc 3 --remote-addr 127.0.0.1:41003
ctl conferences
victim=$("$bin/ringbridge-control" --control "$url" --json conferences | grep -o '"bridge_id":"[^"]*"' | head -1 | cut -d'"' -f4)
echo "--- stopping bridge $victim; its conferences move after 3 missed reports (0.9 s)"
kill "${pids[$([ "$victim" = eu-1 ] && echo 1 || echo 2)]}"
sleep 1.5
ctl bridges
ctl conferences
