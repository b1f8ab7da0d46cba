# ringbridge entry points. `make run` and `make test` are the two the README promises.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: run serve test bench bench-webrtc bench-subscriptions perf chaos fuzz loadgen lint fmt build toolchain sim etcd chromium nft xdp

## Ensure a Rust toolchain (CI machines may have none installed by hand) and protoc (the etcd
## client crate compiles etcd's protos with it at build time), via rustup and apt-get.
toolchain:
	@command -v $(CARGO) >/dev/null 2>&1 || { \
	  echo "installing rustup toolchain"; \
	  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal; }
	@command -v protoc >/dev/null 2>&1 || { \
	  echo "installing protobuf-compiler (apt-get)"; \
	  apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null; }

## A real etcd for the etcd store's tests (Debian's etcd-server), via apt-get when missing.
etcd:
	@command -v etcd >/dev/null 2>&1 || { \
	  echo "installing etcd-server (apt-get)"; \
	  apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null; }

## Headless Chromium and its driver for the page's end-to-end test (Debian's packages), via apt-get.
chromium:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  echo "installing chromium + chromium-driver (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

## nft, tc and ping for the tests' network-namespace links (the NACK repair test's lossy link is
## an nftables rule: the kernels we run on may lack netem; the shaped simulcast test's is a tbf
## qdisc; the XDP test pings through its veth), Debian's nftables, iproute2 and iputils-ping, via
## apt-get when missing.
nft:
	@command -v nft >/dev/null 2>&1 || { \
	  echo "installing nftables (apt-get)"; \
	  apt-get update -qq && apt-get install -y -qq nftables >/dev/null; }
	@command -v tc >/dev/null 2>&1 || { \
	  echo "installing iproute2 (apt-get)"; \
	  apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null; }
	@command -v ping >/dev/null 2>&1 || { \
	  echo "installing iputils-ping (apt-get)"; \
	  apt-get update -qq && apt-get install -y -qq iputils-ping >/dev/null; }

build: toolchain
	$(CARGO) build --release --bin ringbridge --bin ringbridge-control

## Start a bridge on loopback, run a 3-party demo conference through its gRPC API, print results;
## then a control plane with two bridges places conferences and fails one over; the autoscaler;
## a live stream (publisher, origin, edges, viewers, the pull tree); the simulations.
run: build
	RUST_LOG=$${RUST_LOG:-warn} ./target/release/ringbridge --media 127.0.0.1:0 --api 127.0.0.1:0 demo
	@echo; echo "=== control plane ==="
	bash control/scripts/demo.sh
	@echo; echo "=== autoscaler ==="
	bash control/scripts/autoscale-demo.sh
	@echo; echo "=== live stream ==="
	bash control/scripts/stream-demo.sh
	@echo; echo "=== cost simulation (24 h in virtual time) ==="
	./target/release/ringbridge-control simulate --svg /tmp/ringbridge-day.svg
	@echo; echo "=== one stream to 100 000 viewers (through the focus, in virtual time) ==="
	./target/release/ringbridge-control simulate-stream --viewers 100000 2>/dev/null
	@echo; echo "=== WebRTC: publish and play in a browser ==="
	@echo "make serve, then open http://127.0.0.1:8080/ (the page publishes the camera with WHIP and plays it with WHEP)"
	@echo "and http://127.0.0.1:8080/room/demo in two tabs or more (a room: everyone sees and hears everyone)"

## A control plane with the WebRTC page on http://127.0.0.1:8080/ and two bridges, until Ctrl-C.
serve: build
	bash control/scripts/serve.sh

## The autoscaler's cost simulation: default day and a 1 000 000-participant day, and one
## stream to 1 000 000 viewers -> perf/results/sim-<date>-*.{json,svg}
sim: toolchain
	$(CARGO) build --release -p ringbridge-control
	./target/release/ringbridge-control --json simulate --svg perf/results/sim-$(shell date +%F)-day.svg > perf/results/sim-$(shell date +%F)-day.json
	./target/release/ringbridge-control --json simulate --participants 1000000 --max-bridges 5000 --svg perf/results/sim-$(shell date +%F)-1m.svg > perf/results/sim-$(shell date +%F)-1m.json
	./target/release/ringbridge-control --json simulate-stream --viewers 1000000 > perf/results/sim-$(shell date +%F)-stream-1m.json
	@cat perf/results/sim-$(shell date +%F)-day.json perf/results/sim-$(shell date +%F)-stream-1m.json

## Python venv with the real clients the tests drive (python3-venv via apt-get if missing):
## pylibsrtp (SRTP interop), aiortc (WebRTC over WHIP/WHEP) and selenium (drives Chromium through
## Debian's chromedriver: no browser download). PY_DEPS changes remake it.
VENV := .venv
PY_DEPS := pylibsrtp==1.0.0 aiortc==1.16.0 numpy==2.4.6 selenium==4.51.0
$(VENV)/.ready: Makefile
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 venv unavailable: installing python3-venv"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv python3-pip && python3 -m venv $(VENV); }
	$(VENV)/bin/pip install -q --disable-pip-version-check $(PY_DEPS)
	@touch $@

## Unit and end-to-end tests (both engines, libsrtp interop), then lints. A failed test is run
## once more alone and reported as FLAKY if it then passes; failing twice fails (.ci/test.sh).
test: toolchain etcd chromium nft $(VENV)/.ready
	RINGBRIDGE_PYTHON=$(abspath $(VENV))/bin/python bash .ci/test.sh $(CARGO) --workspace --lib --bins --tests -- --test-threads=2
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Criterion benches of the core's per-packet decision.
bench: toolchain
	$(CARGO) bench -p ringbridge-bench -- --warm-up-time 1 --measurement-time 3

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Side-by-side run: ringbridge uring/mio vs floor and naive forwarders -> perf/results/<date>-<host>.{md,json,svg}
## The AF_XDP engine's XDP program: dataplane/xdp/redirect.o from redirect.ll (LLVM's llc; the
## object is committed, so building ringbridge needs neither llc nor clang).
xdp:
	llc -march=bpfel -mcpu=v2 -O2 -filetype=obj dataplane/xdp/redirect.ll -o dataplane/xdp/redirect.o

## The chaos soak of the whole fleet (docs/chaos.md): 30 min at the defaults; MINUTES and SEED
## change it. Needs root (nftables for the lossy link) and etcd. Writes perf/results/<date>-chaos-seed<S>.*
MINUTES ?= 30
SEED ?= 1
chaos: toolchain etcd nft
	$(CARGO) build --release --bin ringbridge --bin ringbridge-control --bin ringbridge-perf
	./target/release/ringbridge-perf chaos --minutes $(MINUTES) --seed $(SEED) --out perf/results

perf: toolchain
	$(CARGO) build --release -p ringbridge-dataplane -p ringbridge-bench
	./target/release/ringbridge-perf --out perf/results

## Subscriptions vs plain fan-out (bridge CPU per copy, interleaved windows; ~8 min) and a
## 50-person room with last-N 4 -> perf/results/<date>-{subscriptions,room50-lastn4}.json
bench-subscriptions: toolchain
	$(CARGO) build --release -p ringbridge-dataplane -p ringbridge-bench
	bash bench/subscriptions.sh perf/results/$(shell date +%F)-subscriptions.json
	ROUNDS=6 SECS=4 P=50 CONFS=1 PPS=40 CYCLE=plain,4 bash bench/subscriptions.sh \
		perf/results/$(shell date +%F)-room50-lastn4.json

## WebRTC measurements (a few minutes on 2 cores; see docs/measuring.md): DTLS handshakes per
## second per core, POST /whep -> first decoded frame over 50 aiortc viewers, and RTP forwarding
## CPU per copy while 200 handshakes run vs none -> perf/results/<date>-{dtls,whep-first-frame,
## webrtc-forwarding}.json
bench-webrtc: toolchain $(VENV)/.ready
	$(CARGO) build --release -p ringbridge-dataplane -p ringbridge-control -p ringbridge-bench
	./target/release/ringbridge-dtlsbench --json perf/results/$(shell date +%F)-dtls.json
	PYTHON=$(VENV)/bin/python bash bench/webrtc/first-frame.sh --viewers 50 --baseline 50 \
	  --json perf/results/$(shell date +%F)-whep-first-frame.json
	./target/release/ringbridge-webrtcload --json perf/results/$(shell date +%F)-webrtc-forwarding.json

## Coverage-guided fuzzing with libFuzzer on stable Rust: sanitizer-coverage flags (stable -C
## options) on a separate crate (fuzz/, not in the workspace), seeds from the tests' packets.
## FUZZ_RUNS inputs per target, at most FUZZ_SECS seconds each; a crash fails the target.
FUZZ_TARGETS ?= rtp rtcp srtp table core rewrite stun
FUZZ_RUNS ?= 10000000
FUZZ_SECS ?= 600
FUZZ_TRIPLE = $(shell rustc -vV | sed -n 's/^host: //p')
FUZZ_FLAGS = -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks
fuzz: toolchain
	RINGBRIDGE_FUZZ_SEEDS=$(abspath fuzz/seeds) $(CARGO) test -q -p ringbridge-dataplane --test fuzz_seeds
	cd fuzz && RUSTFLAGS="$(FUZZ_FLAGS)" $(CARGO) build --release --target $(FUZZ_TRIPLE)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t fuzz/artifacts/$$t; \
	  echo "== fuzz $$t: up to $(FUZZ_RUNS) inputs or $(FUZZ_SECS) s"; \
	  fuzz/target/$(FUZZ_TRIPLE)/release/$$t -runs=$(FUZZ_RUNS) -max_total_time=$(FUZZ_SECS) \
	    -print_final_stats=1 -artifact_prefix=fuzz/artifacts/$$t/ fuzz/corpus/$$t fuzz/seeds/$$t \
	    2>&1 | grep -E "^Done|stat::number_of_executed_units|stat::peak_rss|ERROR|panicked|SUMMARY"; \
	done

## A quick loadgen run against a spawned bridge (override ARGS).
loadgen: toolchain
	$(CARGO) build --release -p ringbridge-dataplane -p ringbridge-bench
	./target/release/ringbridge-loadgen $${ARGS:---spawn uring --participants 5 --audio --video-kbps 1500 --duration 5}
