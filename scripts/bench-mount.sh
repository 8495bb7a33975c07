#!/usr/bin/env bash
# Mount benchmark: layerfs against kernel overlayfs and fuse-overlayfs (over the image's layers
# unpacked into directories, OCI whiteouts turned into overlayfs ones) and ratarmount (over the
# layer blobs themselves), on the same images in one run.
#
# Images (built once, cached under $CACHE/bench-mount):
#   debian    the pull benchmark's four-layer Debian image (minbase, Python, a toolchain, .debs)
#   bigfile   one gzip layer: a 200 MiB incompressible file (AES-CTR keystream of a fixed key)
#             and a 1.04 GiB text file (base64 of the same keystream, about 3:4 compressible)
#   many      one gzip layer of 100,000 small files in 1,000 directories
#
# Rows: time to a mount that answers stat; first (cold) and second (warm) full stat walk;
# full read through tar (cold); cold sequential read of the 200 MiB file; 1,000 random 4 KiB
# reads in the 1 GiB file (median and p99, cold); daemon peak RSS (VmHWM); disk used beyond
# the compressed blobs. Caches are dropped and the mount made afresh before every cold row.
#
# Environment: BENCH_QUICK=1 skips the 100,000-entry image; LAYERFS as in lib.sh.
# Runs as root (drop_caches, kernel overlayfs, unpacking with owners and devices).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" -eq 0 ] || die "run as root: the benchmark drops caches and mounts kernel overlayfs"

ensure_packages "${COMMON_PACKAGES[@]}" fuse-overlayfs:fuse-overlayfs openssl:openssl \
    python3:python3 setfattr:attr
build_layerfs

BM=$CACHE/bench-mount
mkdir -p "$BM/empty"

# ratarmount from PyPI, in its own virtual environment.
RATARMOUNT=$BM/venv/bin/ratarmount
if [ ! -x "$RATARMOUNT" ]; then
    say "installing ratarmount from PyPI into $BM/venv"
    if ! { python3 -m venv "$BM/venv" && "$BM/venv/bin/pip" install -q ratarmount; } >"$BM/pip.log" 2>&1; then
        cat "$BM/pip.log" >&2
        say "ratarmount could not be installed; its column shows n/a"
        RATARMOUNT=
    fi
fi

# --- images -----------------------------------------------------------------------------------

keystream() { # BYTES: a repeatable incompressible stream (finite input: no SIGPIPE)
    head -c "$1" /dev/zero | openssl enc -aes-128-ctr -nosalt -K 000102030405060708090a0b0c0d0e0f \
        -iv 00000000000000000000000000000000
}

if [ ! -s "$BM/bigfile.tar" ]; then
    say "building the big-file layer"
    rm -rf "$BM/bigfile-root"
    mkdir -p "$BM/bigfile-root/data"
    keystream $((200 << 20)) >"$BM/bigfile-root/data/random200m"
    # 768 MiB as base64 lines: 1.04 GiB of text.
    keystream $((768 << 20)) | base64 -w 76 >"$BM/bigfile-root/data/text1g"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
        -C "$BM/bigfile-root" -cf "$BM/bigfile.tar.tmp" .
    mv "$BM/bigfile.tar.tmp" "$BM/bigfile.tar"
    rm -rf "$BM/bigfile-root"
fi
oci_image_cached "$BM/bigfile-oci" latest /bin/sh "$BM/bigfile.tar"

if [ -z "${BENCH_QUICK:-}" ] && [ ! -s "$BM/many.tar" ]; then
    say "building the 100,000-entry layer"
    rm -rf "$BM/many-root"
    python3 - "$BM/many-root" <<'EOF'
import os, sys
root = sys.argv[1]
for d in range(1000):
    p = os.path.join(root, "d%03d" % (d // 100), "e%03d" % d)
    os.makedirs(p)
    for f in range(99):
        with open(os.path.join(p, "f%02d" % f), "w") as fh:
            fh.write("file %d %d\n" % (d, f) * (1 + (d * f) % 7))
EOF
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
        -C "$BM/many-root" -cf "$BM/many.tar.tmp" .
    mv "$BM/many.tar.tmp" "$BM/many.tar"
    rm -rf "$BM/many-root"
fi
[ -z "${BENCH_QUICK:-}" ] && oci_image_cached "$BM/many-oci" latest /bin/sh "$BM/many.tar"

DEB=$CACHE/bench/oci
[ -f "$DEB/index.json" ] || die "run scripts/bench-pull.sh once first: it builds the Debian image in $DEB"

WORK=$(mktemp -d -t layerfs-bench-mount.XXXXXX)
cleanup() {
    # Every mount under the work directory, deepest first.
    awk -v w="$WORK" '$2 ~ "^"w { print $2 }' /proc/mounts | sort -r | while read -r m; do
        fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    stop_registry
    rm -rf "$WORK"
}
trap cleanup EXIT

start_registry "$WORK/registry"
STORE=$WORK/store

# --- helpers ----------------------------------------------------------------------------------

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print('%.3f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$2"; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# Layer blobs of an OCI layout, bottom first.
layer_blobs() {
    local layout=$1 mf
    mf=$(jq -r '.manifests[0].digest[7:]' "$layout/index.json")
    jq -r '.layers[].digest[7:]' "$layout/blobs/sha256/$mf" | sed "s|^|$layout/blobs/sha256/|"
}

# Unpack each layer into its own directory with overlayfs' whiteouts; prints the lowerdir list.
unpack_lowers() {
    local layout=$1 out=$2 i=0 blob list=""
    mkdir -p "$out"
    for blob in $(layer_blobs "$layout"); do
        i=$((i + 1))
        if [ ! -d "$out/$i" ]; then
            mkdir -p "$out/$i.tmp"
            tar --xattrs --xattrs-include='*' --numeric-owner -xpzf "$blob" -C "$out/$i.tmp"
            python3 - "$out/$i.tmp" <<'EOF'
import os, sys
root = sys.argv[1]
for dirpath, dirs, files in os.walk(root):
    for f in files:
        p = os.path.join(dirpath, f)
        if f == ".wh..wh..opq":
            os.unlink(p)
            os.setxattr(dirpath, "trusted.overlay.opaque", b"y")
        elif f.startswith(".wh."):
            os.unlink(p)
            os.mknod(os.path.join(dirpath, f[4:]), 0o600 | 0o020000, 0)
EOF
            mv "$out/$i.tmp" "$out/$i"
        fi
        list="$out/$i${list:+:}$list"
    done
    echo "$list"
}

# mount_tool TOOL IMAGE MNT: mounts, prints the seconds until stat of MNT/$PROBE answers.
mount_tool() {
    local tool=$1 image=$2 mnt=$3 t0 t1
    mkdir -p "$mnt"
    t0=$(now)
    case $tool in
    layerfs) "$LAYERFS" -q --store "$STORE" mount "${REFS[$image]}" "$mnt" ;;
    # A read-only overlay needs two lower directories: an empty one goes at the bottom.
    overlayfs) mount -t overlay overlay -o "ro,lowerdir=${LOWERS[$image]}:$BM/empty" "$mnt" ;;
    fuse-overlayfs) fuse-overlayfs -o "lowerdir=${LOWERS[$image]}" "$mnt" 2>/dev/null ;;
    ratarmount) # shellcheck disable=SC2086 # a list of blob paths
        "$RATARMOUNT" --index-folders "$WORK/rat-index" ${BLOBS[$image]} "$mnt" >/dev/null 2>&1 ;;
    esac
    local tries=0
    until stat "$mnt/$PROBE" >/dev/null 2>&1; do
        tries=$((tries + 1))
        [ $tries -lt 30000 ] || die "$tool: $mnt/$PROBE did not appear"
        sleep 0.002
    done
    t1=$(now)
    elapsed "$t0" "$t1"
}

umount_tool() {
    fusermount3 -u "$1" 2>/dev/null || umount "$1"
    local _
    for _ in $(seq 1 200); do
        mountpoint -q "$1" || return 0
        sleep 0.05
    done
}

daemon_pid() { # TOOL MNT
    case $1 in
    layerfs) pgrep -f "mount --foreground.* $2\$" | head -1 ;;
    fuse-overlayfs) pgrep -f "fuse-overlayfs .*$2" | head -1 ;;
    ratarmount) pgrep -f "ratarmount .*$2" | head -1 ;;
    *) echo "" ;;
    esac
}

hwm() { # PID -> MiB
    [ -n "$1" ] || { echo "-"; return; }
    awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "-"
}

timed() { # CMD...: seconds
    local t0 t1
    t0=$(now)
    "$@" >/dev/null 2>&1
    t1=$(now)
    elapsed "$t0" "$t1"
}

walk() { find "$1" -printf '%s %m %u\n' >/dev/null; }
read_all() { tar -cf - -C "$1" . | wc -c >/dev/null; }

random_reads() { # FILE -> "median p99" in ms
    python3 - "$1" <<'EOF'
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
rng = random.Random(42)
lat = []
for _ in range(1000):
    off = rng.randrange(0, size - 4096) & ~4095
    t = time.perf_counter()
    os.pread(fd, 4096, off)
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
print("%.2f %.2f" % (lat[len(lat) // 2], lat[int(len(lat) * 0.99)]))
EOF
}

# --- the runs ---------------------------------------------------------------------------------

declare -A LOWERS BLOBS REFS
IMAGES=(debian bigfile)
[ -z "${BENCH_QUICK:-}" ] && IMAGES+=(many)
declare -A LAYOUT=([debian]=$DEB [bigfile]=$BM/bigfile-oci [many]=$BM/many-oci)
declare -A PROBES=([debian]=etc/os-release [bigfile]=data/random200m [many]=d000/e000/f00)

TOOLS=(layerfs overlayfs fuse-overlayfs)
[ -n "$RATARMOUNT" ] && TOOLS+=(ratarmount)

for img in "${IMAGES[@]}"; do
    REFS[$img]=$REGISTRY/bench/$img:latest
    push "${LAYOUT[$img]}" latest "${REFS[$img]}" 2>/dev/null
    "$LAYERFS" -q --store "$STORE" pull "${REFS[$img]}" >/dev/null
    say "unpacking the layers of $img for overlayfs"
    LOWERS[$img]=$(unpack_lowers "${LAYOUT[$img]}" "$BM/lowers-$img")
done

# ratarmount needs the blobs with names it recognises; give each image its own links.
for img in "${IMAGES[@]}"; do
    mkdir -p "$WORK/blobs-$img"
    list=""
    n=0
    for b in $(layer_blobs "${LAYOUT[$img]}"); do
        n=$((n + 1))
        ln -sf "$b" "$WORK/blobs-$img/$n.tar.gz"
        list+=" $WORK/blobs-$img/$n.tar.gz"
    done
    BLOBS[$img]=$list
done

declare -A R
for img in "${IMAGES[@]}"; do
    PROBE=${PROBES[$img]}
    say "image $img"
    for tool in "${TOOLS[@]}"; do
        mnt=$WORK/mnt-$tool-$img
        # Build whatever index the tool keeps (layerfs built its own during pull).
        if [ "$tool" = ratarmount ]; then
            t=$(mount_tool "$tool" "$img" "$mnt")
            R[$img,$tool,index]=$t
            umount_tool "$mnt"
        fi
        ready=()
        for _ in 1 2 3 4 5; do
            ready+=("$(mount_tool "$tool" "$img" "$mnt")")
            umount_tool "$mnt"
        done
        R[$img,$tool,ready]=$(printf '%s\n' "${ready[@]}" | sort -n | sed -n 3p)
        drop
        mount_tool "$tool" "$img" "$mnt" >/dev/null
        R[$img,$tool,walk1]=$(timed walk "$mnt")
        R[$img,$tool,walk2]=$(timed walk "$mnt")
        umount_tool "$mnt"
        drop
        mount_tool "$tool" "$img" "$mnt" >/dev/null
        R[$img,$tool,tar]=$(timed read_all "$mnt")
        R[$img,$tool,tarwarm]=$(timed read_all "$mnt")
        if [ "$img" = bigfile ]; then
            umount_tool "$mnt"
            drop
            mount_tool "$tool" "$img" "$mnt" >/dev/null
            R[$img,$tool,seq]=$(timed cat "$mnt/data/random200m")
            umount_tool "$mnt"
            drop
            mount_tool "$tool" "$img" "$mnt" >/dev/null
            R[$img,$tool,rand]=$(random_reads "$mnt/data/text1g")
        fi
        R[$img,$tool,rss]=$(hwm "$(daemon_pid "$tool" "$mnt")")
        umount_tool "$mnt"
        case $tool in
        layerfs) # this image's layer indexes and caches
            R[$img,$tool,disk]=$(for b in $(layer_blobs "${LAYOUT[$img]}"); do
                h=$(basename "$b")
                du -sk "$STORE/layerfs/indexes/$h.idx" "$STORE/layerfs/cache/$h".* 2>/dev/null || true
            done | awk '{s += $1} END {printf "%.1f", s / 1024}') ;;
        overlayfs | fuse-overlayfs) R[$img,$tool,disk]=$(du -sm "$BM/lowers-$img" | cut -f1) ;;
        ratarmount) R[$img,$tool,disk]=$(du -smc "$WORK"/rat-index 2>/dev/null | tail -1 | cut -f1) ;;
        esac
    done
done

# The cold sequential read's yardstick: gzip -dc of the same bytes (the 200 MiB file comes
# first in the layer), stopped once they are out.
blob=$(layer_blobs "${LAYOUT[bigfile]}" | head -1)
drop
GZIP_S=$(timed sh -c "gzip -dc '$blob' 2>/dev/null | head -c $((200 << 20)) >/dev/null")
drop
PIGZ_S=$(timed sh -c "pigz -dc '$blob' 2>/dev/null | head -c $((200 << 20)) >/dev/null")

# --- report -----------------------------------------------------------------------------------

row() { # LABEL IMG KEY TARGET
    local label=$1 img=$2 key=$3 target=$4 tool line
    line=$(printf '%-34s' "$label")
    for tool in "${TOOLS[@]}"; do
        line+=$(printf ' %16s' "${R[$img,$tool,$key]:-n/a}")
    done
    printf '%s   %s\n' "$line" "$target"
}

ratio() { python3 -c "import sys; a, b = map(float, sys.argv[1:]); print('%.2fx' % (a / b) if b > 0 else 'n/a')" "$1" "$2"; }

for img in "${IMAGES[@]}"; do
    blobs_mb=$(for b in $(layer_blobs "${LAYOUT[$img]}"); do stat -c %s "$b"; done | awk '{s += $1} END {printf "%d", s / 1048576}')
    entries=$(find "$BM/lowers-$img" -mindepth 2 | wc -l)
    echo
    printf '== %s: %s MiB of compressed layers, about %s entries\n' "$img" "$blobs_mb" "$entries"
    head=$(printf '%-34s' "seconds unless noted")
    for tool in "${TOOLS[@]}"; do head+=$(printf ' %16s' "$tool"); done
    printf '%s   %s\n' "$head" "target (layerfs)"
    row "mount ready (median of 5)" "$img" ready "< 0.100 s"
    row "first stat walk (cold)" "$img" walk1 "faster than fuse-overlayfs, ratarmount"
    row "second stat walk (warm)" "$img" walk2 "<= 1.2x overlayfs"
    row "full read, tar | wc (cold)" "$img" tar ""
    row "full read again (warm)" "$img" tarwarm "page-cache speed"
    if [ "$img" = bigfile ]; then
        row "cold read of the 200 MiB file" "$img" seq "<= gzip -dc ($GZIP_S s; pigz -dc $PIGZ_S s)"
        row "1,000 random 4 KiB reads: ms" "$img" rand "p99 < 20 ms (median p99)"
    fi
    row "daemon peak RSS, MiB" "$img" rss "< 50 MiB"
    row "disk beyond the blobs, MiB" "$img" disk "<= 10% of $blobs_mb MiB"
    [ -n "$RATARMOUNT" ] && echo "ratarmount: first mount with index build ${R[$img,ratarmount,index]} s; it unions the layer tars without applying OCI whiteouts."
    echo "ratios layerfs/overlayfs: ready $(ratio "${R[$img,layerfs,ready]}" "${R[$img,overlayfs,ready]}"), walk2 $(ratio "${R[$img,layerfs,walk2]}" "${R[$img,overlayfs,walk2]}"); layerfs/fuse-overlayfs walk1 $(ratio "${R[$img,layerfs,walk1]}" "${R[$img,fuse-overlayfs,walk1]}")"
done
