#!/usr/bin/env bash
# layerfs as a containers-storage mount_program: the write benchmark (scripts/bench-write.sh)
# with plain directory lowers for every tool, against Debian's fuse-overlayfs (C, 1.10), the
# Rust fuse-overlayfs 2.0 from crates.io (installed under the cache on first use) and kernel
# overlayfs. Runs as root; run scripts/bench-mount.sh once first (it unpacks the lowers).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FO2=$CACHE/fuse-overlayfs-2
if [ ! -x "$FO2/bin/fuse-overlayfs" ]; then
    say "installing fuse-overlayfs 2.0 from crates.io into $FO2"
    ensure_packages pkg-config:pkg-config
    if ! cargo install --quiet --locked --root "$FO2" --version '^2' fuse-overlayfs >"$CACHE/fo2.log" 2>&1; then
        cat "$CACHE/fo2.log" >&2
        say "fuse-overlayfs 2.0 could not be built; its column is left out"
    fi
fi
extra=""
[ -x "$FO2/bin/fuse-overlayfs" ] && extra="fuse-overlayfs-2.0=$FO2/bin/fuse-overlayfs"

LOWER_MODE=dirs EXTRA_TOOLS=$extra exec "$(dirname "${BASH_SOURCE[0]}")/bench-write.sh"
