#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for FUZZ_SECS seconds each and prints one line per
# target: inputs tried, seconds, crashes. The checked-in inputs in fuzz/corpus/TARGET (seeds,
# and every input that once crashed a target) are replayed first; new inputs go to
# fuzz/target/work/TARGET, crashes to fuzz/artifacts/TARGET.
#
#   FUZZ_SECS=60            time per target (0: only replay the checked-in inputs)
#   FUZZ_TARGETS="a b"      a subset of the targets
#   FUZZ_SANITIZER=none     or address (needs a toolchain with the sanitizer runtime)
#   FUZZ_JOBS=1             parallel fuzzing processes per target
#
# cargo fuzz needs nightly rustc flags; on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks them.
# Exit status: 0 when no target crashed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

SECS=${FUZZ_SECS:-60}
SANITIZER=${FUZZ_SANITIZER:-none}
JOBS=${FUZZ_JOBS:-1}
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked --quiet cargo-fuzz
fi
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}

cargo fuzz build --sanitizer "$SANITIZER" -O >&2

failed=0
printf '%-18s %12s %8s %8s %s\n' target inputs seconds crashes note
for t in $targets; do
    mkdir -p "target/work/$t" "corpus/$t"
    log=$(mktemp)
    note=
    crashes=0
    # Replay every checked-in input once.
    if ! cargo fuzz run --sanitizer "$SANITIZER" -O "$t" "corpus/$t" -- -runs=0 >"$log" 2>&1; then
        crashes=1
        note="a checked-in input fails: $(grep -m1 -E 'panicked|ERROR' "$log" || true)"
    fi
    runs=$(grep -c '' < <(find "corpus/$t" -type f))
    secs=0
    if [ "$crashes" -eq 0 ] && [ "$SECS" -gt 0 ]; then
        start=$(date +%s)
        if ! cargo fuzz run --sanitizer "$SANITIZER" -O --jobs "$JOBS" "$t" "target/work/$t" "corpus/$t" -- \
            -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=20 >"$log" 2>&1; then
            crashes=1
            note="$(grep -m1 -E 'panicked|ERROR: libFuzzer' "$log" || true); input in fuzz/artifacts/$t"
        fi
        secs=$(($(date +%s) - start))
        done_runs=$(grep -oE 'Done [0-9]+ runs' "$log" | awk '{s += $2} END {print s + 0}')
        if [ "$done_runs" -eq 0 ]; then
            done_runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
        fi
        runs=$((runs + ${done_runs:-0}))
    fi
    printf '%-18s %12s %8s %8s %s\n' "$t" "$runs" "$secs" "$crashes" "$note"
    [ "$crashes" -eq 0 ] || { failed=1; tail -40 "$log" >&2; }
    rm -f "$log"
done
exit "$failed"
