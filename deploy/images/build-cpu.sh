#!/usr/bin/env bash
# Build the CPU serving image on this machine with no container registry, start it the
# way Kubernetes runs it, and query it. Optional; not part of CI.
#
#   sudo deploy/images/build-cpu.sh            # from anywhere in the repository
#
# Needs root and Debian's podman (which brings buildah's engine) and debootstrap
# (`apt-get install podman debootstrap`), the Debian mirror apt already uses, and a
# package index for `pip download` (the image build itself runs with --network none).
#
#   1. a bookworm root filesystem from debootstrap (minbase + python3, python3-venv,
#      tini, ca-certificates), imported as the base image     ($BASE_TAG)
#   2. the serving wheels (deploy/images/requirements-cpu.txt) downloaded here into a
#      staged build context holding only what the Dockerfile copies
#   3. `podman build` of deploy/images/cpu.Dockerfile, offline   ($IMAGE_TAG)
#   4. the image started as UID 10001, read-only root, every capability dropped, no new
#      privileges, the demo artifacts mounted read-only at /artifacts with a writable
#      copy of their catalogue over /artifacts/catalog (as deploy/k8s does), and an
#      admin token file
#      (no network: the checks run inside it, over its loopback)
#   5. checks inside it: readiness and liveness health, a Recall through
#      `recall-engine query`, the UID, the read-only root, then SIGTERM drains and exits 0
#
# Environment: DEBIAN_MIRROR (default: the first URI in this host's apt sources),
# WORK (default: build/image-cpu), ARTIFACTS (default: demo/artifacts, built with the
# repository's .venv when missing), PYTHON (for pip download; default: .venv/bin/python),
# KEEP=1 leaves the container running, REBUILD_BASE=1 redoes debootstrap, OCI_RUNTIME
# picks podman's runtime (default: podman's, or runc on hybrid cgroups, see below).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="${WORK:-$REPO/build/image-cpu}"
BASE_TAG="${BASE_TAG:-localhost/recall-engine-base:bookworm}"
IMAGE_TAG="${IMAGE_TAG:-localhost/recall-engine:cpu}"
ARTIFACTS="${ARTIFACTS:-$REPO/demo/artifacts}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
NAME="recall-engine-smoke-$$"
APP_UID=10001

say() { printf '\n== %s\n' "$*"; }
elapsed() { echo $(($(date +%s) - $1)); }
need() { command -v "$1" >/dev/null || { echo "missing: $1 ($2)" >&2; exit 2; }; }

[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap, rootful podman)" >&2; exit 2; }
need debootstrap "apt-get install debootstrap"
need podman "apt-get install podman"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

# crun refuses hybrid cgroup hierarchies whose cgroup2 mount has controllers ("cgroups
# in hybrid mode not supported, drop all controllers from cgroupv2"); runc runs there.
RUNTIME=()
if [ -n "${OCI_RUNTIME:-}" ]; then
    RUNTIME=(--runtime "$OCI_RUNTIME")
elif grep -qs . /sys/fs/cgroup/unified/cgroup.controllers && command -v runc >/dev/null; then
    RUNTIME=(--runtime runc)
fi

mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    local uri
    uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
    [ -n "$uri" ] || uri="$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
    [ -n "$uri" ] || { echo "set DEBIAN_MIRROR (no apt source found)" >&2; exit 2; }
    echo "$uri"
}

mkdir -p "$WORK"
T0=$(date +%s)

# ---------------------------------------------------------------- 1. base image
if [ "${REBUILD_BASE:-0}" = 1 ] || ! podman image exists "$BASE_TAG"; then
    say "debootstrap bookworm (minbase + python3, python3-venv, tini)"
    t=$(date +%s)
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,tini,ca-certificates \
        bookworm "$WORK/rootfs" "$(mirror)" >"$WORK/debootstrap.log"
    # what a container never needs: package caches and lists, docs, man pages, locales
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/* \
        "$WORK"/rootfs/usr/share/doc/* "$WORK"/rootfs/usr/share/man/* \
        "$WORK"/rootfs/usr/share/locale/* "$WORK"/rootfs/var/log/*
    tar -C "$WORK/rootfs" -c . | podman import -q --change 'CMD ["/bin/sh"]' - "$BASE_TAG" >/dev/null
    rm -rf "$WORK/rootfs"
    echo "debootstrap + import: $(elapsed "$t") s"
fi

# ---------------------------------------------------------------- 2. build context
say "staging the build context and the wheelhouse"
t=$(date +%s)
CTX="$WORK/context"
rm -rf "$CTX"
mkdir -p "$CTX/deploy"
for p in pyproject.toml README.md protos engine plugins exporters bench; do
    cp -a "$REPO/$p" "$CTX/$p"
done
cp -a "$REPO/deploy/images" "$CTX/deploy/images"
find "$CTX" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
PLATFORMS=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_17 manylinux2014; do
    PLATFORMS+=(--platform "${tag}_$(uname -m)")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    "${PLATFORMS[@]}" --no-color -d "$CTX/deploy/images/wheelhouse" \
    -r "$REPO/deploy/images/requirements-cpu.txt" 'setuptools>=69' wheel
echo "context + wheels: $(elapsed "$t") s, wheelhouse $(du -sh "$CTX/deploy/images/wheelhouse" | cut -f1)"

# ---------------------------------------------------------------- 3. image
say "podman build (offline: --network none, PIP_NO_INDEX=1)"
t=$(date +%s)
podman build "${RUNTIME[@]}" --format docker --network none --layers \
    --build-arg BASE_IMAGE="$BASE_TAG" --build-arg PIP_NO_INDEX=1 \
    -f "$CTX/deploy/images/cpu.Dockerfile" -t "$IMAGE_TAG" "$CTX" >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; exit 1; }
BUILD_S=$(elapsed "$t")
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE_TAG")
BASE_SIZE=$(podman image inspect --format '{{.Size}}' "$BASE_TAG")
echo "build: ${BUILD_S} s; image $((SIZE / 1000000)) MB (base $((BASE_SIZE / 1000000)) MB)"
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE_TAG" | cut -c1-110 | head -12

# ---------------------------------------------------------------- 4. run
if [ ! -d "$ARTIFACTS/catalog" ]; then
    say "building the demo artifacts into $REPO/demo"
    (cd "$REPO" && "$PYTHON" -c \
        "from pathlib import Path; from recall_engine.offline.demo_build import ensure_demo; ensure_demo(Path('demo'))")
fi
say "starting $IMAGE_TAG as UID $APP_UID, read-only root, no capabilities"
RUN_DIR="$WORK/run"
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR/secret"
# As in deploy/k8s: the bundles read-only, the catalogue (whose update log start-up
# opens for writing) a writable copy mounted over artifacts/catalog.
# (a snapshot: the demo folder may be rebuilt meanwhile)
cp -R "$ARTIFACTS" "$RUN_DIR/artifacts"
cp -R "$RUN_DIR/artifacts/catalog" "$RUN_DIR/catalog"
chown -R "$APP_UID:$APP_UID" "$RUN_DIR/catalog"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN_DIR/secret/token"
chmod 0444 "$RUN_DIR/secret/token"
cleanup() { [ "${KEEP:-0}" = 1 ] || podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
t=$(date +%s)
# --ulimit: podman asks the runtime for large open-files and process limits, which a
# host without CAP_SYS_RESOURCE refuses ("error setting rlimit type 7/6: operation not
# permitted"); ask for limits that fit. --health-interval disable: no systemd timer for
# the HEALTHCHECK (`podman healthcheck run` below still runs it).
podman "${RUNTIME[@]}" run -d --name "$NAME" \
    --ulimit "nofile=${NOFILE:-16384}:${NOFILE:-16384}" --ulimit "nproc=${NPROC:-16384}:${NPROC:-16384}" \
    --health-interval disable \
    --user "$APP_UID:$APP_UID" --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,size=256m \
    --cap-drop ALL --security-opt no-new-privileges --network none \
    -v "$RUN_DIR/artifacts:/artifacts:ro" -v "$RUN_DIR/catalog:/artifacts/catalog" \
    -v "$RUN_DIR/secret:/etc/recall-engine/secret:ro" \
    -e RECALL_ENGINE_ADMIN_TOKEN_FILE=/etc/recall-engine/secret/token \
    "$IMAGE_TAG" >/dev/null

in_ctr() { podman exec "$NAME" "$@"; }
health() { in_ctr python /opt/recall-engine/libexec/health_probe.py "$@"; }
for _ in $(seq 1 120); do  # at most ~120 s for the load and warm-up
    health >/dev/null 2>&1 && break
    [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" = true ] \
        || { podman logs "$NAME" | tail -20; exit 1; }
    sleep 1
done
START_S=$(elapsed "$t")

# ---------------------------------------------------------------- 5. checks
say "checks"
health
health --service liveness
in_ctr recall-engine query --user u42 --history item-0001,item-0006 \
    --text "photos of distant galaxies" -k 5
echo "uid: $(in_ctr id -u) (want $APP_UID)"
[ "$(in_ctr id -u)" = "$APP_UID" ]
if in_ctr sh -c 'touch /opt/recall-engine/x' 2>/dev/null; then
    echo "root filesystem is writable" >&2; exit 1
fi
echo "root filesystem: read-only"
podman healthcheck run "$NAME" && echo "image HEALTHCHECK: healthy"
t=$(date +%s)
podman stop -t 60 "$NAME" >/dev/null
STOP_S=$(elapsed "$t")
CODE=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
podman logs "$NAME" 2>&1 | grep -o '"event": *"\(shutting_down\|draining\|stopped\)"' || true
echo "SIGTERM -> exit $CODE after ${STOP_S} s (drain_s + in-flight grace)"
[ "$CODE" = 0 ]

say "done in $(elapsed "$T0") s"
echo "image $IMAGE_TAG: $((SIZE / 1000000)) MB, built in ${BUILD_S} s; SERVING ${START_S} s after start"
