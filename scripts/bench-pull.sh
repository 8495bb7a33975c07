#!/usr/bin/env bash
# Pull benchmark: layerfs against skopeo, on the same image from the same loopback registry in
# the same run, each into an empty store every time.
#
# The image has four gzip layers built from Debian's packages (cached after the first run):
#   1. base       Debian minbase with documentation and translations (many small files)
#   2. python     Python 3.11 and its standard library, extracted from the .deb files
#   3. toolchain  cpp-12 and binutils: large ELF executables and libraries
#   4. archives   the .deb files of layers 2 and 3: already compressed, so incompressible
#
# Environment:
#   BENCH_RUNS          timed pulls per tool (default 5); one untimed warm-up pull each first
#   LAYERFS_PULL_ARGS   extra arguments for `layerfs pull` (e.g. "--jobs 4")
#   SKOPEO_COPY_ARGS    extra arguments for `skopeo copy`
#   LAYERFS_DEMO_CACHE  where the tarballs and the OCI layout are cached
#   LAYERFS             the binary to measure (default target/release/layerfs, built here)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS=${BENCH_RUNS:-5}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive number"
read -r -a LAYERFS_ARGS <<<"${LAYERFS_PULL_ARGS:-}"
read -r -a SKOPEO_ARGS <<<"${SKOPEO_COPY_ARGS:-}"
# The targets printed beside the results.
WALL_RATIO_TARGET=0.80
RSS_TARGET_MIB=64

ensure_packages "${COMMON_PACKAGES[@]}"
build_layerfs

B=$CACHE/bench
mkdir -p "$B/debs"
debian_tar "$B/1-base.tar" --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
# The extract variant unpacks the named packages (and what they depend on) without installing
# them; the hook keeps the downloaded .deb files for layer 4.
debian_tar "$B/2-python.tar" --variant=extract \
    --include=python3.11-minimal,libpython3.11-stdlib \
    --extract-hook="sync-out /var/cache/apt/archives $B/debs"
debian_tar "$B/3-toolchain.tar" --variant=extract \
    --include=cpp-12,binutils-x86-64-linux-gnu \
    --extract-hook="sync-out /var/cache/apt/archives $B/debs"
if [ ! -s "$B/4-archives.tar" ]; then
    [ -n "$(ls "$B"/debs/*.deb 2>/dev/null)" ] ||
        die "no .deb files in $B/debs: delete $B and run again"
    rm -rf "$B/archives-root"
    mkdir -p "$B/archives-root/var/cache/apt/archives"
    cp "$B"/debs/*.deb "$B/archives-root/var/cache/apt/archives/"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
        -C "$B/archives-root" -cf "$B/4-archives.tar.tmp" .
    mv "$B/4-archives.tar.tmp" "$B/4-archives.tar"
    rm -rf "$B/archives-root"
fi
oci_image_cached "$B/oci" latest /bin/bash \
    "$B/1-base.tar" "$B/2-python.tar" "$B/3-toolchain.tar" "$B/4-archives.tar"

WORK=$(mktemp -d -t layerfs-bench.XXXXXX)
cleanup() {
    stop_registry
    rm -rf "$WORK"
}
trap cleanup EXIT

start_registry "$WORK/registry"
REF=$REGISTRY/bench/debian-dev:latest
push "$B/oci" latest "$REF"

# The image, as the registry serves it.
manifest=$(skopeo inspect --raw --tls-verify=false "docker://$REF")
total=$(jq '[.layers[].size] | add' <<<"$manifest")
say "image $REF: $(jq '.layers | length' <<<"$manifest") layers, $((total / 1000000)) MB compressed"
jq -r '.layers[] | "  \(.digest[7:19])  \(.size / 1000000 | floor) MB"' <<<"$manifest" >&2

# run_once TOOL OUT.times: one pull into an empty store, timed by /usr/bin/time.
run_once() {
    local tool=$1 out=$2 store=$WORK/store-$1
    rm -rf "$store"
    case $tool in
    layerfs)
        /usr/bin/time -f '%e %U %S %M' -o "$out" \
            "$LAYERFS" -q --store "$store" pull "${LAYERFS_ARGS[@]}" "$REF" >/dev/null
        ;;
    skopeo)
        /usr/bin/time -f '%e %U %S %M' -o "$out" \
            skopeo copy --quiet --src-tls-verify=false "${SKOPEO_ARGS[@]}" \
            "docker://$REF" "oci:$store:$REF" >/dev/null
        ;;
    esac
}

say "warm-up pull with each tool (not timed)"
run_once layerfs "$WORK/warmup"
run_once skopeo "$WORK/warmup"
# Both stores must hold the same blobs: the bytes the registry sent.
if ! diff <(ls "$WORK/store-layerfs/blobs/sha256") <(ls "$WORK/store-skopeo/blobs/sha256") >/dev/null; then
    die "layerfs and skopeo stored different blobs"
fi

load=$(cut -d' ' -f1-3 /proc/loadavg)
say "$RUNS timed pulls with each tool, alternating which goes first"
for i in $(seq 1 "$RUNS"); do
    if ((i % 2)); then order=(layerfs skopeo); else order=(skopeo layerfs); fi
    for tool in "${order[@]}"; do
        run_once "$tool" "$WORK/$tool.$i"
        awk -v i="$i" -v t="$tool" '{ printf "  run %d %-8s wall %6.2fs  cpu %6.2fs  rss %6.1f MiB\n",
            i, t, $1, $2 + $3, $4 / 1024 }' "$WORK/$tool.$i" >&2
    done
done
rm -rf "$WORK/store-layerfs" "$WORK/store-skopeo"

# median TOOL FIELD: the median over the runs of wall (1), cpu (2: user+sys) or rss in KiB (3).
median() {
    local tool=$1 field=$2 i
    for i in $(seq 1 "$RUNS"); do
        awk -v f="$field" '{ print (f == 1) ? $1 : (f == 2) ? $2 + $3 : $4 }' "$WORK/$tool.$i"
    done | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

lw=$(median layerfs 1) lc=$(median layerfs 2) lr=$(median layerfs 3)
sw=$(median skopeo 1) sc=$(median skopeo 2) sr=$(median skopeo 3)

echo
echo "pull of $((total / 1000000)) MB in $(jq '.layers | length' <<<"$manifest") layers from a loopback registry;" \
    "median of $RUNS runs; $(nproc) cores"
echo "layerfs: $("$LAYERFS" --version)"
echo "skopeo:  $(skopeo --version)"
echo "load average before the runs: $load (other work on the machine makes the times noisy)"
echo
awk -v lw="$lw" -v lc="$lc" -v lr="$lr" -v sw="$sw" -v sc="$sc" -v sr="$sr" 'BEGIN {
    printf "%-16s %10s %12s %15s\n", "", "wall (s)", "cpu (s)", "peak RSS (MiB)"
    printf "%-16s %10.2f %12.2f %15.1f\n", "layerfs", lw, lc, lr / 1024
    printf "%-16s %10.2f %12.2f %15.1f\n", "skopeo", sw, sc, sr / 1024
    printf "%-16s %10.2f %12.2f %15.2f\n", "layerfs/skopeo", lw / sw, lc / sc, lr / sr
}'
echo
awk -v lw="$lw" -v sw="$sw" -v lr="$lr" -v wt="$WALL_RATIO_TARGET" -v rt="$RSS_TARGET_MIB" 'BEGIN {
    r = lw / sw
    printf "target: wall <= %.2fx skopeo: %.2fx (%s)\n", wt, r, (r <= wt) ? "met" : "NOT met"
    printf "target: layerfs peak RSS < %d MiB: %.1f MiB (%s)\n", rt, lr / 1024, (lr / 1024 < rt) ? "met" : "NOT met"
}'
echo
echo "Both store the same blobs. skopeo checks each blob's digest; layerfs also decompresses every"
echo "layer to check its diff_id against the config, and fsyncs each blob before it is published."
