# Shared by the demo scripts (sourced): binaries, a temporary directory, background processes
# stopped on exit, and `ready` to start one and read a field of its ready line.
set -euo pipefail
bin=${BIN:-target/release}
data=$(mktemp -d)
pids=()
cleanup() {
  kill -INT "${pids[@]}" 2>/dev/null || true # INT: bridges stop at once (TERM would drain)
  kill -CONT "${pids[@]}" 2>/dev/null || true # a stopped process acts on a signal only once continued
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

ready() { # start a process in the background, wait for its ready line, set REPLY to a field of it
  local field=$1; shift
  local out="$data/out.$#.$RANDOM"
  RUST_LOG=error "$@" >"$out" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 100); do grep -q ready "$out" && break; sleep 0.05; done
  REPLY=$(grep -o "$field=[^ ]*" "$out" | cut -d= -f2)
}
