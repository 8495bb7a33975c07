#!/usr/bin/env bash
# The gate every change passes: formatting, lints, tests and documentation.
#
# The integration tests run the real binary against Debian's docker-registry and use skopeo,
# htpasswd and FUSE; `.ci/run` installs them on a fresh Debian 12 machine (as root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

missing=()
for cmd in docker-registry skopeo htpasswd fusermount3; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
    printf 'warning: %s not found; the integration tests need them (on Debian: apt-get install docker-registry skopeo apache2-utils fuse3)\n' \
        "${missing[*]}" >&2
fi

step "cargo fmt --check"
cargo fmt --all --check
cargo fmt --check --manifest-path fuzz/Cargo.toml

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "cargo doc --no-deps (warnings are errors)"
RUSTDOCFLAGS="${RUSTDOCFLAGS:-} -D warnings" cargo doc --no-deps --locked --quiet

# Doc tests first, then every unit and integration test; the summary counts both.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
step "cargo test --doc"
cargo test --doc --locked 2>&1 | tee -a "$log"
step "cargo test --all-targets"
cargo test --all-targets --locked 2>&1 | tee -a "$log"

# Every fuzz target builds, replays its checked-in inputs (seeds and past crashes) and fuzzes
# briefly; scripts/fuzz.sh runs them longer, scripts/reliability.sh the whole campaign.
step "fuzz targets (${CHECK_FUZZ_SECS:-10} s each)"
FUZZ_SECS=${CHECK_FUZZ_SECS:-10} scripts/fuzz.sh

awk '/^test result:/ {
    for (i = 1; i <= NF; i++) {
        if ($(i) ~ /^passed/) p += $(i - 1)
        if ($(i) ~ /^failed/) f += $(i - 1)
        if ($(i) ~ /^ignored/) s += $(i - 1)
    }
} END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
