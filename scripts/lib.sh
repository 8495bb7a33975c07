# shellcheck shell=bash
# Shared helpers for scripts/demo.sh and scripts/bench-pull.sh; sourced, not run.
#
# Images are built from Debian packages with mmdebstrap, written as an OCI image layout by hand
# (pigz, sha256sum, printf: the layout is small enough to need no tool) and pushed with skopeo to
# Debian's docker-registry listening on a free loopback port. Everything slow is cached under
# $CACHE so that a second run starts in seconds.

# The Debian release the images are built from; the mirror is mmdebstrap's default unless
# LAYERFS_DEMO_MIRROR names another.
SUITE=${LAYERFS_DEMO_SUITE:-bookworm}
MIRROR=${LAYERFS_DEMO_MIRROR:-}
CACHE=${LAYERFS_DEMO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/layerfs-demo}
# Fixed timestamps make the tarballs, and so the layer digests, repeatable from one build to
# the next (mmdebstrap honours SOURCE_DATE_EPOCH; the config's "created" uses it too).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAYERFS=${LAYERFS:-$ROOT/target/release/layerfs}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Prints a command, then runs it.
show() {
    printf '\033[36m$ %s\033[0m\n' "$*" >&2
    "$@"
}

# ensure_packages CMD:PACKAGE... installs with apt-get the packages whose command is missing.
ensure_packages() {
    local want=() pair cmd pkg
    for pair in "$@"; do
        cmd=${pair%%:*} pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 || want+=("$pkg")
    done
    [ ${#want[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing ${want[*]}: run as root, or install them with apt-get first"
    say "installing ${want[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${want[@]}"
}

# The packages both scripts need, as command:package.
# shellcheck disable=SC2034 # used by the scripts that source this file
COMMON_PACKAGES=(
    docker-registry:docker-registry skopeo:skopeo mmdebstrap:mmdebstrap pigz:pigz
    curl:curl jq:jq sha256sum:coreutils /usr/bin/time:time gcc:gcc pkg-config:pkg-config
    update-ca-certificates:ca-certificates
)

build_layerfs() {
    if [ -n "${LAYERFS_SKIP_BUILD:-}" ] && [ -x "$LAYERFS" ]; then
        return 0
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (https://rustup.rs)"
    say "building layerfs (cargo build --release)"
    (cd "$ROOT" && cargo build --release)
    [ -x "$LAYERFS" ] || die "cargo build did not produce $LAYERFS"
}

# debian_tar OUT.tar [mmdebstrap options...] builds a tarball with mmdebstrap unless OUT.tar
# is already in the cache.
debian_tar() {
    local out=$1
    shift
    if [ -s "$out" ]; then
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "mmdebstrap needs root here (or build $out elsewhere and copy it into $CACHE)"
    mkdir -p "$(dirname "$out")"
    say "building $(basename "$out") with mmdebstrap ($SUITE), cached in $(dirname "$out")"
    local log=$out.log
    # shellcheck disable=SC2086
    if ! mmdebstrap --quiet --format=tar "$@" "$SUITE" "$out.tmp" $MIRROR >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$out.tmp"
        die "mmdebstrap failed (log above)"
    fi
    mv "$out.tmp" "$out"
}

# The OCI names of this machine's OS architecture.
oci_arch() {
    case $(uname -m) in
    x86_64) echo amd64 ;;
    aarch64) echo arm64 ;;
    armv7l) echo arm ;;
    i?86) echo 386 ;;
    ppc64le) echo ppc64le ;;
    s390x) echo s390x ;;
    riscv64) echo riscv64 ;;
    *) uname -m ;;
    esac
}

# put_blob LAYOUT FILE moves FILE into LAYOUT/blobs/sha256 and prints its digest and size.
put_blob() {
    local layout=$1 file=$2 hex size
    hex=$(sha256sum "$file" | cut -d' ' -f1)
    size=$(stat -c %s "$file")
    mkdir -p "$layout/blobs/sha256"
    mv "$file" "$layout/blobs/sha256/$hex"
    echo "sha256:$hex $size"
}

# oci_image LAYOUT TAG CMD TAR... writes an OCI image layout with one gzip layer per tarball
# (bottom first) and the image tagged TAG in its index.json.
oci_image() {
    local layout=$1 tag=$2 cmd=$3
    shift 3
    rm -rf "$layout"
    mkdir -p "$layout/blobs/sha256"
    local tar diff_id digest size layers="" diff_ids="" history="" sep=""
    for tar in "$@"; do
        diff_id=sha256:$(sha256sum "$tar" | cut -d' ' -f1)
        # -n: no file name or time in the gzip header, so the digest depends on content only.
        pigz -n -6 <"$tar" >"$layout/layer.tmp"
        read -r digest size < <(put_blob "$layout" "$layout/layer.tmp")
        layers+="$sep{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$digest\",\"size\":$size}"
        diff_ids+="$sep\"$diff_id\""
        history+="$sep{\"created\":\"$(created)\",\"created_by\":\"$(basename "$tar")\"}"
        sep=,
    done
    printf '{"created":"%s","architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["%s"]},"rootfs":{"type":"layers","diff_ids":[%s]},"history":[%s]}' \
        "$(created)" "$(oci_arch)" "$cmd" "$diff_ids" "$history" >"$layout/config.tmp"
    read -r digest size < <(put_blob "$layout" "$layout/config.tmp")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[%s]}' \
        "$digest" "$size" "$layers" >"$layout/manifest.tmp"
    read -r digest size < <(put_blob "$layout" "$layout/manifest.tmp")
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
        "$digest" "$size" "$tag" >"$layout/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
}

created() { date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ; }

# oci_image_cached LAYOUT TAG CMD TAR... rebuilds the layout only when a tarball is newer.
oci_image_cached() {
    local layout=$1 stamp=$1/.built-from tar key=""
    for tar in "${@:4}"; do key+="$(stat -c '%n %s %Y' "$tar");"; done
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
        return 0
    fi
    say "writing the OCI image layout $layout"
    oci_image "$@"
    printf '%s' "$key" >"$stamp"
}

# start_registry DIR starts docker-registry on a free loopback port with its storage and
# config in DIR, sets REGISTRY (host:port) and REGISTRY_PID, and waits until it answers.
# The caller's EXIT trap must call stop_registry.
start_registry() {
    local dir=$1 port _
    mkdir -p "$dir/storage"
    for _ in $(seq 1 20); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        # A connection that succeeds means the port is taken.
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            continue
        fi
        cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  redirect:
    disable: true
http:
  addr: 127.0.0.1:$port
  secret: layerfs-demo
EOF
        docker-registry serve "$dir/config.yml" >>"$dir/registry.log" 2>&1 &
        REGISTRY_PID=$!
        REGISTRY=127.0.0.1:$port
        for _ in $(seq 1 100); do
            if curl -fsS -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null; then
                return 0
            fi
            kill -0 "$REGISTRY_PID" 2>/dev/null || break
            sleep 0.1
        done
        stop_registry
    done
    cat "$dir/registry.log" >&2
    die "docker-registry did not start (log above)"
}

stop_registry() {
    if [ -n "${REGISTRY_PID:-}" ]; then
        kill "$REGISTRY_PID" 2>/dev/null || true
        wait "$REGISTRY_PID" 2>/dev/null || true
        REGISTRY_PID=
    fi
}

# push LAYOUT TAG REF copies the image from an OCI layout to the loopback registry.
push() {
    show skopeo copy --quiet --dest-tls-verify=false "oci:$1:$2" "docker://$3"
}
