#!/usr/bin/env bash
# Write benchmark: a layerfs writable mount against fuse-overlayfs and kernel overlayfs over the
# same lower content, with upper directories on the same disk, in one run.
#
# Lower content: the pull benchmark's Debian image and the mount benchmark's big-file image
# (a 1 GiB text file); layerfs mounts them from its store (or, with LOWER_MODE=dirs, from the
# same unpacked directories the others use), the others from the layers unpacked with
# overlayfs' whiteouts (scripts/bench-mount.sh builds both; run it once first).
#
# Rows (caches dropped and a fresh upper directory before each):
#   copy-up    append one byte to the 1 GiB lower file; compared with cp of it on the same disk
#   untar      unpack a tarball of 20,000 small files into the mount
#   rm -rf     remove usr/share of the Debian image (lower files: whiteouts, no copies)
#   randwrite  20,000 random 4 KiB pwrites into a new 256 MiB file, then fsync
#
# Environment: LOWER_MODE=image|dirs; EXTRA_TOOLS="NAME=COMMAND ..." adds fuse-overlayfs-like
# programs (called as COMMAND -o lowerdir=...,upperdir=...,workdir=... MNT) as more columns.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" -eq 0 ] || die "run as root: the benchmark drops caches and mounts kernel overlayfs"
ensure_packages "${COMMON_PACKAGES[@]}" fuse-overlayfs:fuse-overlayfs python3:python3
build_layerfs

MODE=${LOWER_MODE:-image}
BM=$CACHE/bench-mount
for img in debian bigfile; do
    [ -d "$BM/lowers-$img" ] || die "$BM/lowers-$img is missing: run scripts/bench-mount.sh once first"
done
lowers_of() { # IMAGE: overlayfs lowerdir list, top first (layers are unpacked as 1, 2, ...)
    local list="" n
    for n in $(find "$BM/lowers-$1" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | grep -E '^[0-9]+$' | sort -n); do
        list="$BM/lowers-$1/$n${list:+:}$list"
    done
    echo "$list"
}
declare -A LOWERS=([debian]=$(lowers_of debian) [bigfile]=$(lowers_of bigfile))

SMALL=$BM/small20k.tar
if [ ! -s "$SMALL" ]; then
    say "building a tarball of 20,000 small files"
    rm -rf "$BM/small-root"
    python3 - "$BM/small-root" <<'EOF'
import os, sys
root = sys.argv[1]
for d in range(200):
    p = os.path.join(root, "dir%03d" % d)
    os.makedirs(p)
    for f in range(100):
        with open(os.path.join(p, "file%03d" % f), "w") as fh:
            fh.write("x" * ((d * 100 + f) % 3000))
EOF
    tar -C "$BM/small-root" -cf "$SMALL" .
    rm -rf "$BM/small-root"
fi

WORK=$(mktemp -d -p "$(dirname "$CACHE")" layerfs-bench-write.XXXXXX)
STORE=$WORK/store
cleanup() {
    awk -v w="$WORK" '$2 ~ "^"w { print $2 }' /proc/mounts | sort -r | while read -r m; do
        fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    stop_registry
    rm -rf "$WORK"
}
trap cleanup EXIT

declare -A REFS
if [ "$MODE" = image ]; then
    start_registry "$WORK/registry"
    for img in debian bigfile; do
        layout=$CACHE/bench/oci
        [ "$img" = bigfile ] && layout=$BM/bigfile-oci
        REFS[$img]=$REGISTRY/bench/$img:latest
        push "$layout" latest "${REFS[$img]}" 2>/dev/null
        "$LAYERFS" -q --store "$STORE" pull "${REFS[$img]}" >/dev/null
    done
fi

TOOLS=(layerfs fuse-overlayfs overlayfs)
declare -A EXTRA
for spec in ${EXTRA_TOOLS:-}; do
    EXTRA[${spec%%=*}]=${spec#*=}
    TOOLS+=("${spec%%=*}")
done

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print('%.3f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$2"; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }

N=0
# mount_rw TOOL IMAGE: a writable mount with a fresh upper; prints the mount point.
mount_rw() {
    local tool=$1 img=$2 d
    N=$((N + 1))
    d=$WORK/$tool-$N
    mkdir -p "$d/upper" "$d/work" "$d/mnt"
    case $tool in
    layerfs)
        if [ "$MODE" = image ]; then
            "$LAYERFS" -q --store "$STORE" mount --upper "$d/upper" "${REFS[$img]}" "$d/mnt"
        else
            "$LAYERFS" -q mount --lowerdir "${LOWERS[$img]}" --upper "$d/upper" "$d/mnt"
        fi
        ;;
    overlayfs)
        mount -t overlay overlay \
            -o "lowerdir=${LOWERS[$img]},upperdir=$d/upper,workdir=$d/work" "$d/mnt"
        ;;
    fuse-overlayfs)
        fuse-overlayfs -o "lowerdir=${LOWERS[$img]},upperdir=$d/upper,workdir=$d/work" "$d/mnt"
        ;;
    *)
        ${EXTRA[$tool]} -o "lowerdir=${LOWERS[$img]},upperdir=$d/upper,workdir=$d/work" "$d/mnt" &
        local _
        for _ in $(seq 1 200); do mountpoint -q "$d/mnt" && break; sleep 0.05; done
        ;;
    esac
    echo "$d/mnt"
}

umount_rw() { fusermount3 -u "$1" 2>/dev/null || umount "$1"; }

timed() { # CMD... -> seconds (of the command and a sync)
    local t0 t1
    t0=$(now)
    "$@" >/dev/null
    sync
    t1=$(now)
    elapsed "$t0" "$t1"
}

copy_up() { printf x >>"$1/data/text1g"; }
untar() { mkdir -p "$1/untar" && tar -xf "$SMALL" -C "$1/untar"; }
remove() { rm -rf "${1:?}/usr/share"; }
randwrite() {
    python3 - "$1/randfile" <<'EOF'
import os, random, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, 256 << 20)
rng = random.Random(7)
block = os.urandom(4096)
for _ in range(20000):
    os.pwrite(fd, block, rng.randrange(0, (256 << 20) // 4096) * 4096)
os.fsync(fd)
os.close(fd)
EOF
}

declare -A R
for tool in "${TOOLS[@]}"; do
    say "$tool"
    for row in copy_up untar remove randwrite; do
        img=debian
        [ "$row" = copy_up ] && img=bigfile
        drop
        mnt=$(mount_rw "$tool" "$img")
        R[$tool,$row]=$(timed "$row" "$mnt")
        umount_rw "$mnt"
    done
done
# cp of the same 1 GiB file on the same disk, cold.
drop
lower_file=$(find "$BM/lowers-bigfile" -path '*/data/text1g' | head -1)
CP_S=$(timed cp "$lower_file" "$WORK/cp-copy")
rm -f "$WORK/cp-copy"

echo
printf '== writes (%s lowers for layerfs), seconds\n' "$MODE"
head=$(printf '%-30s' "")
for tool in "${TOOLS[@]}"; do head+=$(printf ' %15s' "$tool"); done
echo "$head"
for row in copy_up untar remove randwrite; do
    line=$(printf '%-30s' "$row")
    for tool in "${TOOLS[@]}"; do line+=$(printf ' %15s' "${R[$tool,$row]}"); done
    echo "$line"
done
ratio() { python3 -c "import sys; a, b = map(float, sys.argv[1:]); print('%.2f' % (a / b) if b > 0 else 'n/a')" "$1" "$2"; }
echo "cp of the 1 GiB file on the same disk: $CP_S s; layerfs copy-up speed = $(ratio "$CP_S" "${R[layerfs,copy_up]}") of cp (target >= 0.80)"
for tool in "${TOOLS[@]}"; do
    [ "$tool" = layerfs ] && continue
    printf 'layerfs / %s:' "$tool"
    for row in copy_up untar remove randwrite; do
        printf ' %s %s' "$row" "$(ratio "${R[layerfs,$row]}" "${R[$tool,$row]}")"
    done
    echo "   (below 1: layerfs faster)"
done
