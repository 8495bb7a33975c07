#!/usr/bin/env bash
# The reliability and security campaign in one run: fuzzing, hostile registries and layers,
# injected faults (SIGKILLs, a full disk, a killed mount daemon) and a soak under load, then one
# table of what was tried and what failed. Needs what the tests need (root, docker-registry,
# skopeo, umoci, fuse3; `.ci/run` installs them).
#
#   FUZZ_SECS=60    fuzzing time per target (scripts/fuzz.sh)
#   SOAK_SECS=120   length of the soak (16 readers on a mount, 4 writers on a writable mount)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZ_SECS=${FUZZ_SECS:-60}
SOAK_SECS=${SOAK_SECS:-120}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rows=()
row() { rows+=("$(printf '%-10s %-62s %10s %8s' "$1" "$2" "$3" "$4")"); }
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Runs `cargo test` on the given test binaries with --nocapture; prints passed and failed.
tests() {
    local log=$1
    shift
    cargo test --locked "$@" -- --nocapture --test-threads=2 >"$log" 2>&1
    awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
         END { if (p + f == 0) f = 1; print p + 0, f + 0 }' "$log"
}

say "fuzzing, $FUZZ_SECS s per target"
FUZZ_SECS=$FUZZ_SECS scripts/fuzz.sh >"$work/fuzz" 2>"$work/fuzz.err"
fuzz_rc=$?
while read -r target inputs secs crashes _; do
    [ "$target" = target ] && continue
    row fuzz "$target ($secs s)" "$inputs" "$crashes"
done <"$work/fuzz"
[ $fuzz_rc -eq 0 ] || row fuzz "scripts/fuzz.sh failed (see above)" - 1
[ $fuzz_rc -eq 0 ] || tail -40 "$work/fuzz.err" >&2

say "hostile registries"
read -r p f < <(tests "$work/hostile" --test hostile --test redirect)
row hostile "registries: oversized, endless, trickling, bad JSON, loops, tokens" "$((p + f)) cases" "$f"

say "hostile layers"
read -r p f < <(tests "$work/layers" --test unpack --test bombs)
cases=$(grep -cE ': (refused by|unpacked:)|^[a-z-]+: (pulled|refused), peak RSS' "$work/layers")
row hostile "layers: traversal, links out, devices, bombs, truncation ($p tests)" "$cases cases" "$f"

say "faults: SIGKILLs and a damaged store"
read -r p f < <(tests "$work/fsck" --test fsck)
kills=$(grep -hoE '^(pull|commit): [0-9]+ runs' "$work/fsck" | awk '{s += $2} END {print s + 0}')
gcs=$(grep -hoE 'gc: [0-9]+ runs' "$work/fsck" | awk '{s += $2} END {print s + 0}')
row faults "SIGKILL during pull, commit and gc; fsck clean after each" "$((kills + gcs)) kills" "$f"

say "faults: a killed mount daemon and a full disk; soak for $SOAK_SECS s"
read -r p f < <(LAYERFS_SOAK_SECS=$SOAK_SECS tests "$work/load" --test reliability --test writable)
row faults "full disk (pull, upper), SIGKILLed daemon, remount ($p tests)" "$((p + f)) tests" "$f"
soak=$(grep -hoE 'soak: .*' "$work/load" | head -1)
row load "${soak:-soak did not report}" "$SOAK_SECS s" "$f"

printf '\n%-10s %-62s %10s %8s\n' area what tried failures
printf '%s\n' "${rows[@]}"
failed=$(printf '%s\n' "${rows[@]}" | awk '$NF != 0 {n++} END {print n + 0}')
echo
if [ "$failed" -eq 0 ]; then
    echo "no failures"
else
    echo "$failed rows with failures; logs: rerun the matching cargo test with --nocapture"
    exit 1
fi
