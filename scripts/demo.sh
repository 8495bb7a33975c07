#!/usr/bin/env bash
# A tour of layerfs on a fresh Debian 12 machine, as root.
#
# Installs what is missing (docker-registry, skopeo, umoci, mmdebstrap, ...), builds layerfs,
# builds a small Debian image from Debian's packages, pushes it to a registry on a loopback
# port, pulls it with layerfs and shows that other tools read the store.
#
# Environment:
#   LAYERFS_DEMO_STORE  the store to pull into (default ./demo-store; emptied first, kept after)
#   LAYERFS_DEMO_CACHE  where the rootfs tarball and OCI layout are cached
#                       (default ${XDG_CACHE_HOME:-~/.cache}/layerfs-demo)
#   LAYERFS_DEMO_MIRROR a Debian mirror for mmdebstrap (default: mmdebstrap's)
#   LAYERFS             the binary to use (default target/release/layerfs, built here)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STORE=${LAYERFS_DEMO_STORE:-$PWD/demo-store}
case $STORE in
*:*) die "LAYERFS_DEMO_STORE must not contain ':' (skopeo and umoci split 'PATH:REF' at the first one)" ;;
esac

# umoci reads the store below; htpasswd and fuse3 are not used here but by the tests that
# scripts/check.sh runs next, so the two commands of the README's quick start suffice.
ensure_packages "${COMMON_PACKAGES[@]}" umoci:umoci htpasswd:apache2-utils fusermount3:fuse3
build_layerfs

# The image: Debian's minbase variant (essential packages and apt) with merged /usr and without
# documentation, manual pages and translations, about 28 MB compressed.
ROOTFS=$CACHE/demo/rootfs-$SUITE-minbase.tar
debian_tar "$ROOTFS" --variant=minbase \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*'
oci_image_cached "$CACHE/demo/oci" "$SUITE" /bin/bash "$ROOTFS"

WORK=$(mktemp -d -t layerfs-demo.XXXXXX)
cleanup() {
    if [ -n "${MNT:-}" ] && grep -q " $MNT fuse" /proc/mounts 2>/dev/null; then
        "$LAYERFS" umount "$MNT" >/dev/null 2>&1 || fusermount3 -uz "$MNT" || true
    fi
    stop_registry
    rm -rf "$WORK"
}
trap cleanup EXIT

start_registry "$WORK/registry"
REF=$REGISTRY/demo/debian:$SUITE
say "a registry listens on $REGISTRY; pushing the image as $REF"
push "$CACHE/demo/oci" "$SUITE" "$REF"

if [ -f "$STORE/oci-layout" ]; then
    rm -rf "$STORE"
elif [ -e "$STORE" ] && [ -n "$(ls -A "$STORE")" ]; then
    die "$STORE exists and is not a store; move it away or set LAYERFS_DEMO_STORE"
fi
export LAYERFS_STORE=$STORE

say "pulling with layerfs into $STORE (plain HTTP, as for every loopback registry)"
show "$LAYERFS" pull "$REF"
show "$LAYERFS" images
show "$LAYERFS" inspect "$REF"

say "the store is an OCI image layout:"
show ls "$STORE" "$STORE/blobs/sha256"
show jq . "$STORE/index.json"

say "skopeo reads it (and checks every digest while copying):"
show skopeo inspect "oci:$STORE:$REF"
show skopeo copy --quiet "oci:$STORE:$REF" "dir:$WORK/copy"
show ls "$WORK/copy"

say "umoci reads it (--image takes PATH:TAG and splits at the first ':'):"
show umoci ls --layout "$STORE"
rootless=()
[ "$(id -u)" -eq 0 ] || rootless=(--rootless)
show umoci unpack "${rootless[@]}" --image "$STORE:$REF" "$WORK/bundle" >/dev/null
show cat "$WORK/bundle/rootfs/etc/debian_version"

say "load imports a 'docker save' tarball; rm and gc remove images and unused blobs:"
show skopeo copy --quiet "oci:$STORE:$REF" "docker-archive:$WORK/saved.tar:demo/debian:saved"
show "$LAYERFS" load "$WORK/saved.tar" --tag localhost/demo/debian:saved
show "$LAYERFS" images
show "$LAYERFS" rm localhost/demo/debian:saved
show "$LAYERFS" gc

say "mount serves the merged rootfs over FUSE straight from the compressed layer (no extraction):"
MNT=$WORK/mnt
mkdir -p "$MNT"
show "$LAYERFS" mount "$REF" "$MNT"
show ls "$MNT"
show cat "$MNT/etc/os-release"
show stat -c '%n %U:%G %a %s bytes' "$MNT/etc/shadow" "$MNT/usr/bin/bash"
if [ "$(id -u)" -eq 0 ]; then
    say "programs of the image run from the mount:"
    show chroot "$MNT" /bin/sh -c 'cat /etc/debian_version; dpkg -l | grep -c ^ii'
fi
say "it is read-only; layerfs umount ends it:"
show sh -c "touch '$MNT/new-file' || true"
show "$LAYERFS" umount "$MNT"

say "with --upper the view is writable; every change lands in the upper directory:"
UPPER=$WORK/upper
show "$LAYERFS" mount --upper "$UPPER" "$REF" "$MNT"
show sh -c "echo 'Welcome to a layerfs demo' > '$MNT/etc/motd'"
show rm "$MNT/etc/issue.net"
show mkdir "$MNT/srv/demo"
show cat "$MNT/etc/motd"
show ls -l "$UPPER" "$UPPER/etc"
say "commit turns the upper directory into a new layer; push uploads the new image:"
NEWREF=$REGISTRY/demo/debian:motd
show "$LAYERFS" commit "$MNT" "$NEWREF" --message "a new motd"
show "$LAYERFS" umount "$MNT"
show "$LAYERFS" push "$NEWREF"
show skopeo inspect --tls-verify=false --format '{{len .Layers}} layers, digest {{.Digest}}' "docker://$NEWREF"
say "pulled back into an empty store and mounted, the change is there:"
show "$LAYERFS" --store "$WORK/store2" pull "$NEWREF"
show "$LAYERFS" --store "$WORK/store2" mount "$NEWREF" "$MNT"
show cat "$MNT/etc/motd"
show "$LAYERFS" umount "$MNT"

say "done. The store stays in $STORE; try:"
cat <<EOF
  export LAYERFS_STORE=$STORE
  $LAYERFS images
  $LAYERFS inspect $REF
  skopeo inspect oci:$STORE:$REF
  umoci ls --layout $STORE
  mkdir -p /tmp/rootfs && $LAYERFS mount $REF /tmp/rootfs && ls /tmp/rootfs && $LAYERFS umount /tmp/rootfs
  mkdir -p /tmp/rw && $LAYERFS mount --upper /tmp/changes $REF /tmp/rw   # writable
(The registry at $REGISTRY has stopped; images in the store stay usable.)
EOF
