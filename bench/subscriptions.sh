#!/usr/bin/env bash
# Bridge CPU per delivered copy with subscriptions vs plain fan-out, in one session: rounds of
# windows A (plain fan-out), B (every participant subscribed to every other: the same copies,
# so the filter's cost alone), C (subscribed to half of the others) and D (subscribed to nobody:
# the bridge receives, looks up and drops every packet, its per-packet cost without copies),
# interleaved A B C D A B C D ... on one bridge and one rig (`ringbridge-loadgen
# --subscribe-cycle`, subscriptions reprogrammed between windows), so that the windows compared
# share the machine's state as closely as they can. The bridge is a spawned io_uring one with
# one worker, not pinned (as `make perf`); with `perf` installed each window also samples it
# (`perf record -e cpu-clock`) for the share of its CPU in user mode, where the filter runs (the
# rest is the kernel's UDP path). From release builds
# (`cargo build --release -p ringbridge-bench -p ringbridge-dataplane`).
#
#   bench/subscriptions.sh [OUT.json]   ROUNDS=20 SECS=5 WARMUP=1 P=9 CONFS=10 PPS=200
#                                       SIZE=1000 EXTRA="--srtp AEAD_AES_128_GCM" (more options)
#                                       CYCLE=plain,8,8,plain (default plain,P-1,(P-1)/2,0)
#
# A window that comes back in a round (CYCLE=plain,8,8,plain: A B B A, balanced for order and
# for a drift within the round) counts pooled in that round, and its later over its first
# occurrence is printed as a control: what the same setting measures twice.
#
# Writes the loadgen's report of every window to OUT.json (default
# perf/results/<date>-subscriptions.json) and prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-perf/results/$(date +%F)-subscriptions.json}
ROUNDS=${ROUNDS:-20} SECS=${SECS:-5} WARMUP=${WARMUP:-1}
P=${P:-9} CONFS=${CONFS:-10} PPS=${PPS:-200} SIZE=${SIZE:-1000} EXTRA=${EXTRA:-}
BIN=${RINGBRIDGE_BIN_DIR:-target/release}
export RINGBRIDGE_BIN_DIR=$BIN
USER_SHARE=""
command -v perf >/dev/null && USER_SHARE=--user-share
CYCLE=${CYCLE:-plain,$((P - 1)),$(((P - 1) / 2)),0}
ARGS="--spawn uring --workers 1 --no-pin --conferences $CONFS --participants $P --pps $PPS --size $SIZE --duration $SECS --warmup $WARMUP --subscribe-cycle $CYCLE --rounds $ROUNDS $USER_SHARE $EXTRA"
echo "ringbridge-loadgen $ARGS" >&2
started=$(date +%s)
# shellcheck disable=SC2086 # word splitting of the options is meant
timeout $((ROUNDS * 4 * (SECS + WARMUP + 5) + 60)) "$BIN/ringbridge-loadgen" $ARGS --json "$OUT"
python3 - "$OUT" "$ARGS" "$(($(date +%s) - started))" <<'EOF'
import json, math, statistics, sys
d = json.load(open(sys.argv[1]))
names = list(dict.fromkeys(d["cycle"]))
per_round = len(d["cycle"])
def wcpu(w):
    # A window's bridge CPU time, ns (also when it delivered nothing).
    r = w["report"]
    return r["bridge_cpu_percent"] / 100 * r["params"]["duration_s"] * 1e9
# Per window name and round: its windows (more than one when the name comes back in a round).
raw = {n: {} for n in names}
for w in d["windows"]:
    raw[w["window"]].setdefault(w["round"], []).append(w)
rounds = sorted(k for k in raw[names[0]] if all(len(raw[n].get(k, [])) == d["cycle"].count(n) for n in names))
def merge(ws):
    # One window's figures from several: sums, and the CPU-weighted user share.
    c = sum(wcpu(w) for w in ws)
    r = {f: sum(w["report"][f] for w in ws) for f in ["received_packets", "sent_packets", "lost_packets", "misrouted_packets"]}
    r["bridge_cpu_percent"] = statistics.mean(w["report"]["bridge_cpu_percent"] for w in ws)
    r["cpu"] = c
    shares = [w["user_share"] for w in ws]
    u = None if None in shares else sum(wcpu(w) * w["user_share"] for w in ws) / c
    return {"report": r, "user_share": u}
by = {n: {k: merge(raw[n][k]) for k in rounds} for n in names}
def cpu(w):
    return w["report"]["cpu"]
base = names[0]
def pooled(n, f):
    return sum(f(by[n][k]) for k in rounds)
def ratio_spread(xs):
    # Ratios: median [lowest-highest], geometric mean (its 2 SE interval).
    logs = [math.log(x) for x in xs]
    m = statistics.mean(logs)
    se = statistics.stdev(logs) / len(logs) ** 0.5 if len(logs) > 1 else 0.0
    return (f"{statistics.median(xs):.3f} [{min(xs):.3f}-{max(xs):.3f}], "
            f"geo. mean {math.exp(m):.3f} ({math.exp(m - 2 * se):.3f}-{math.exp(m + 2 * se):.3f})")
def spread(xs, f="{:.0f}"):
    se = statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0
    return (f"{f.format(statistics.median(xs))} [{f.format(min(xs))}-{f.format(max(xs))}], "
            f"mean {f.format(statistics.mean(xs))} ± {f.format(2 * se)}")
print(f"`ringbridge-loadgen {sys.argv[2]}`: {len(rounds)} rounds in {sys.argv[3]} s\n")
for n in names:
    if d["cycle"].count(n) > 1:
        again = [(wcpu(w[-1]) / max(1, w[-1]["report"]["received_packets"])) / (wcpu(w[0]) / max(1, w[0]["report"]["received_packets"]))
                 for w in (raw[n][k] for k in rounds)]
        print(f"control: {n}, its last over its first window of each round: {ratio_spread(again)}\n")
print("| window | copies / packet in | CPU ns / copy (pooled) | per round: median [lowest-highest], mean ± 2 SE "
      f"| vs {base} (pooled) | vs {base} per round: median [lowest-highest], geo. mean (± 2 SE) | CPU ns / packet in (pooled) "
      f"| user ns / copy (pooled) | user vs {base} | bridge CPU % (median) | lost | misrouted |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in names:
    copies = pooled(n, lambda w: w["report"]["received_packets"])
    sent = pooled(n, lambda w: w["report"]["sent_packets"])
    total = pooled(n, cpu)
    user = None
    if all(by[n][k]["user_share"] is not None for k in rounds):
        user = pooled(n, lambda w: cpu(w) * w["user_share"])
    pct = statistics.median(by[n][k]["report"]["bridge_cpu_percent"] for k in rounds)
    lost = pooled(n, lambda w: w["report"]["lost_packets"])
    mis = pooled(n, lambda w: w["report"]["misrouted_packets"])
    if copies == 0:
        print(f"| {n} | 0 | - | - | - | - | {total / sent:.0f} | - | - | {pct:.1f} | {lost} | {mis} |")
        continue
    per = [cpu(by[n][k]) / by[n][k]["report"]["received_packets"] for k in rounds]
    ratio = [p / (cpu(by[base][k]) / by[base][k]["report"]["received_packets"]) for k, p in zip(rounds, per)]
    base_copy = pooled(base, cpu) / pooled(base, lambda w: w["report"]["received_packets"])
    base_user = None
    if all(by[base][k]["user_share"] is not None for k in rounds):
        base_user = pooled(base, lambda w: cpu(w) * w["user_share"]) / pooled(base, lambda w: w["report"]["received_packets"])
    ucol = "-" if user is None else f"{user / copies:.1f}"
    uvs = "-" if user is None or base_user is None else f"{user / copies / base_user:.3f}"
    print(f"| {n} | {copies / sent:.2f} | {total / copies:.0f} | {spread(per)} | {total / copies / base_copy:.3f} "
          f"| {ratio_spread(ratio)} | {total / sent:.0f} | {ucol} | {uvs} | {pct:.1f} | {lost} | {mis} |")
EOF
