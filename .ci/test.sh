#!/usr/bin/env bash
# `make test`'s test run: every test of the workspace (no stop at the first failing binary), then
# each failed test once more, alone. A test that fails twice fails the run; one that passes the
# second time is reported as FLAKY at the end (with its first failure above in the log), so a
# timing-dependent end-to-end test (real processes, real clients, 2 cores) does not hide the
# rest of the suite, nor pass silently. More than MAX_RETRIED failures are not retried: that is
# a regression, not a flake.
#
# Usage: .ci/test.sh CARGO [cargo test arguments...] [-- libtest arguments...]
set -uo pipefail
cargo=$1
shift
MAX_RETRIED=${MAX_RETRIED:-3}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

"$cargo" test --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] && exit 0

# Which tests failed (names; the same name in two binaries is retried in both).
failed=()
while IFS= read -r line; do
    if [[ $line =~ ^test\ ([^ ]+)\ \.\.\.\ FAILED$ ]]; then
        name=${BASH_REMATCH[1]}
        [[ " ${failed[*]-} " == *" $name "* ]] || failed+=("$name")
    fi
done <"$log"

# Every failed binary must have reported its failed tests (one that crashed or did not build
# has none to retry).
binaries=$(grep -c '^test result: FAILED' "$log")
targets=$(grep -c 'error: test failed, to rerun pass' "$log")
if [ "${#failed[@]}" -eq 0 ] || [ "$targets" -ne "$binaries" ]; then
    echo "test run failed (exit $status) with a build error or a crashed test binary: not retried" >&2
    exit "$status"
fi
if [ "${#failed[@]}" -gt "$MAX_RETRIED" ]; then
    echo "${#failed[@]} tests failed (more than $MAX_RETRIED): not retried" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit "$status"
fi

flaky=()
# The same targets as the first run (the same binaries, nothing rebuilt), this test only.
sep=()
[[ " $* " == *" -- "* ]] || sep=(--)
for name in "${failed[@]}"; do
    echo
    echo "=== retrying $name, alone ==="
    if "$cargo" test --no-fail-fast "$@" "${sep[@]}" --exact "$name"; then
        flaky+=("$name")
    else
        echo "FAILED twice: $name" >&2
        exit "$status"
    fi
done
echo
echo "FLAKY (failed once, passed alone on retry; see the first failure above):"
printf '  %s\n' "${flaky[@]}"
exit 0
