#!/usr/bin/env bash
# POSIX conformance with pjdfstest (the Rust suite from crates.io), inside a layerfs writable
# mount, fuse-overlayfs and kernel overlayfs over the same lower directory, in one run; prints
# each one's summary and the tests that fail on layerfs. Runs as root (pjdfstest switches to the
# users `nobody` and `tests`, created here if missing).
#
# Environment: PJDFSTEST (the binary; installed under the cache if missing).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" -eq 0 ] || die "run as root"
ensure_packages fuse-overlayfs:fuse-overlayfs fusermount3:fuse3
build_layerfs
PJD=${PJDFSTEST:-$(command -v pjdfstest || echo "$CACHE/pjdfstest/bin/pjdfstest")}
if [ ! -x "$PJD" ]; then
    say "installing pjdfstest from crates.io"
    cargo install --quiet --locked --root "$CACHE/pjdfstest" pjdfstest
    PJD=$CACHE/pjdfstest/bin/pjdfstest
fi
id tests >/dev/null 2>&1 || useradd --no-create-home --user-group --shell /usr/sbin/nologin tests

WORK=$(mktemp -d -t layerfs-pjdfstest.XXXXXX)
cleanup() {
    awk -v w="$WORK" '$2 ~ "^"w { print $2 }' /proc/mounts | sort -r | while read -r m; do
        fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
chmod 755 "$WORK"

# The same configuration for all: Linux features, and the two users tests switch to.
cat >"$WORK/pjdfstest.toml" <<'TOML'
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
[settings]
naptime = 0.01
[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
TOML

# A small lower: an image for layerfs, the same tree as a directory for the others.
mkdir -p "$WORK/lower/etc" "$WORK/lower/data"
echo "lower" >"$WORK/lower/etc/motd"
echo "lower" >"$WORK/lower/data/file"
tar --owner=0 --group=0 -C "$WORK/lower" -cf "$WORK/lower.tar" .
mkdir -p "$WORK/oci/blobs/sha256"
oci_image "$WORK/oci" latest /bin/sh "$WORK/lower.tar"
tar -C "$WORK/oci" -cf "$WORK/oci.tar" .
"$LAYERFS" -q --store "$WORK/store" load --tag pjdfstest/lower:1 "$WORK/oci.tar" >/dev/null

run_in() { # NAME MNT
    mkdir -p "$2/pjdfstest"
    (cd "$2/pjdfstest" && "$PJD" -c "$WORK/pjdfstest.toml" -p "$2/pjdfstest" >"$WORK/$1.log" 2>&1) || true
    printf '%-16s %s\n' "$1" "$(grep '^Summary' "$WORK/$1.log" || echo 'no summary (see log)')"
}

for tool in layerfs fuse-overlayfs overlayfs; do
    d=$WORK/$tool
    mkdir -p "$d/upper" "$d/work" "$d/mnt"
    case $tool in
    layerfs) "$LAYERFS" -q --store "$WORK/store" mount --upper "$d/upper" \
        -o allow_other,default_permissions pjdfstest/lower:1 "$d/mnt" ;;
    fuse-overlayfs) fuse-overlayfs -o "lowerdir=$WORK/lower,upperdir=$d/upper,workdir=$d/work" \
        "$d/mnt" 2>/dev/null ;;
    overlayfs) mount -t overlay overlay \
        -o "lowerdir=$WORK/lower,upperdir=$d/upper,workdir=$d/work" "$d/mnt" ;;
    esac
    run_in "$tool" "$d/mnt"
done
for tool in layerfs fuse-overlayfs overlayfs; do
    echo "failing on $tool:"
    grep 'FAILED' "$WORK/$tool.log" | awk '{print "  " $1}' || echo "  none"
done
