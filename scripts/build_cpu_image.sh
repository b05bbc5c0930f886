#!/usr/bin/env bash
# Build docker/Dockerfile.cpu where no registry and no Docker daemon can be reached (the CPU development machines),
# then run `make test-unit` inside the image. Not part of `make test`: it takes a while and needs root.
#   sudo scripts/build_cpu_image.sh            # base, build, test, then clean (keeps nothing but the logs)
#   sudo scripts/build_cpu_image.sh base build test   # keep the image and its storage; `clean` later
# A failing step stops the script with its storage left for a look (about 5 GB, 10 GB during `test`): `clean` then.
# Measured on the 2-core CPU machine: base 3 min, build 9 min (image 4.9 GB), test 6 min.
# Steps:
#   base   debootstrap a Debian bookworm root (Python 3.11 + venv + pip) from a Debian mirror and commit it as the
#          image $BASE_IMAGE with buildah: it stands in for python:3.11-slim, which no registry can serve here.
#   build  `buildah bud` docker/Dockerfile.cpu on it (BASE_IMAGE build arg; chroot isolation, vfs storage, the host's
#          network so apt and pip reach their mirrors, with no bridge, iptables rule or ip_forward change). torch
#          2.13.0+cpu is not on PyPI and PyTorch's index is not reachable: $WHEELS is bind-mounted at /opt/wheels for
#          the RUN steps only (the Makefile's FIND_LINKS picks it up) and PIP_ARGS points pip there. Where PyPI is
#          reached through a TLS-intercepting proxy (pip here needs PIP_CERT), $PIP_CA is mounted too, with a pip.conf
#          naming it, at /etc/xdg/pip for the RUN steps only: the image keeps only the empty mount points.
#   test   `make test-unit` in a container of the image, without network (a private network namespace: loopback only).
#   clean  remove the containers, images, storage and root folder this script made (all under $WORKDIR). buildah
#          itself also creates /etc/cni/net.d/cni.lock and /var/lib/containers/cache on first use (no network
#          config): left alone here, as other buildah or podman users may share them.
# Needs: root, debootstrap and buildah (`apt-get install --no-install-recommends debootstrap buildah`).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
: "${WORKDIR:=/var/tmp/grpo-lambda-image}"     # rootfs, buildah storage and logs: several GB
: "${MIRROR:=http://deb.debian.org/debian}"
: "${WHEELS:=/opt/wheels}"                     # where torch-2.13.0+cpu-cp311-*.whl lies
: "${BASE_IMAGE:=localhost/debian-bookworm-python3.11:local}"
: "${IMAGE:=localhost/grpo-lambda:cpu}"
: "${PIP_ARGS:=--find-links /opt/wheels}"
: "${PIP_CA:=${PIP_CERT:-}}"                   # a CA bundle pip must trust inside the build (empty: pip's own)
STORE=$WORKDIR/storage
BUILDAH=(buildah --root "$STORE" --runroot "$WORKDIR/run" --storage-driver vfs)
LOG=$WORKDIR/logs

say() { printf '[build_cpu_image %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { say "error: $*" >&2; exit 1; }

# rm -rf of a folder only when nothing is mounted below it (a failed debootstrap can leave /proc mounted there).
remove_tree() {
  if awk -v d="$1/" 'index($2 "/", d) == 1 {found = 1} END {exit !found}' /proc/mounts; then
    die "mounts remain under $1 (see /proc/mounts): unmount them, then rerun"
  fi
  rm -rf --one-file-system "$1"
}

need() {
  [[ $(id -u) = 0 ]] || die "run as root (debootstrap and buildah's vfs storage need it)"
  for c in "$@"; do command -v "$c" >/dev/null || die "$c not found: apt-get install --no-install-recommends $c"; done
}

# What the steps must not change on the host: links, forwarding and (where iptables exists) its rules.
netstate() {
  ip -o link | awk -F': ' '{print $2}' | sort
  echo "ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
  if command -v iptables >/dev/null; then iptables -S; iptables -t nat -S; fi
}
check_net() {  # $1: state saved before
  local after
  after=$(netstate)
  [[ "$after" == "$1" ]] || { say "host network state changed:"; diff <(echo "$1") <(echo "$after") || true; die "see above"; }
}

base() {
  need debootstrap buildah
  if "${BUILDAH[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then say "base image $BASE_IMAGE exists"; return; fi
  local root=$WORKDIR/rootfs t0=$SECONDS
  remove_tree "$root"
  say "debootstrap bookworm from $MIRROR into $root"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" "$MIRROR" >"$LOG/debootstrap.log" 2>&1 || die "debootstrap failed: $LOG/debootstrap.log"
  cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
EOF
  ln -sf python3 "$root/usr/bin/python"   # python:3.11-slim has `python` too
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/tmp/* "$root"/var/log/*.log
  say "rootfs: $(du -sh "$root" | cut -f1) ($((SECONDS - t0)) s); committing $BASE_IMAGE"
  local ctr mnt
  ctr=$("${BUILDAH[@]}" from scratch)
  mnt=$("${BUILDAH[@]}" mount "$ctr")
  tar -C "$root" --numeric-owner -cf - . | tar -C "$mnt" --numeric-owner -xpf -
  "${BUILDAH[@]}" umount "$ctr" >/dev/null
  "${BUILDAH[@]}" config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd '["python3"]' "$ctr"
  "${BUILDAH[@]}" commit -q "$ctr" "$BASE_IMAGE" >/dev/null
  "${BUILDAH[@]}" rm "$ctr" >/dev/null
  remove_tree "$root"
  say "base image done ($((SECONDS - t0)) s)"
}

build() {
  need buildah
  ls "$WHEELS"/torch-2.13.0+cpu-cp311-*.whl >/dev/null 2>&1 || die "no torch 2.13.0+cpu wheel in $WHEELS"
  local before t0=$SECONDS
  before=$(netstate)
  say "buildah bud docker/Dockerfile.cpu on $BASE_IMAGE -> $IMAGE (log: $LOG/build.log)"
  # --network host: chroot isolation in the host's network namespace (no bridge, no NAT rules, no ip_forward).
  local rc mounts=(--volume "$WHEELS:/opt/wheels:ro")
  if [[ -n $PIP_CA ]]; then
    [[ -r $PIP_CA ]] || die "PIP_CA=$PIP_CA is not readable"
    mkdir -p "$WORKDIR/pipconf"
    cp "$PIP_CA" "$WORKDIR/pipconf/ca.pem"
    printf '[global]\ncert = /etc/xdg/pip/ca.pem\n' >"$WORKDIR/pipconf/pip.conf"
    mounts+=(--volume "$WORKDIR/pipconf:/etc/xdg/pip:ro")
    say "pip inside the build trusts $PIP_CA"
  fi
  set +e
  "${BUILDAH[@]}" bud --isolation chroot --network host --pull-never "${mounts[@]}" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_ARGS="$PIP_ARGS" \
    -f "$REPO/docker/Dockerfile.cpu" -t "$IMAGE" "$REPO" 2>&1 | tee "$LOG/build.log" |
    grep --line-buffered -E '^(STEP|COMMIT|torch |Writing|Successfully|Error|error)'
  rc=${PIPESTATUS[0]}
  set -e
  [[ $rc = 0 ]] || die "build failed (exit $rc) after $((SECONDS - t0)) s: $LOG/build.log"
  check_net "$before"
  say "built $IMAGE in $((SECONDS - t0)) s"
  "${BUILDAH[@]}" images
}

test_unit() {
  need buildah
  local before ctr rc t0=$SECONDS
  before=$(netstate)
  ctr=$("${BUILDAH[@]}" from --pull-never "$IMAGE")
  say "make test-unit in $ctr (no network; log: $LOG/test-unit.log)"
  set +e
  # chroot isolation only runs in the caller's network namespace (buildah refuses --network none with it): run
  # buildah in a fresh one of its own, with nothing but loopback; it goes away with the process.
  unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh \
    "${BUILDAH[@]}" run --isolation chroot "$ctr" -- make test-unit 2>&1 | tee "$LOG/test-unit.log" | tail -n 15
  rc=${PIPESTATUS[0]}
  set -e
  "${BUILDAH[@]}" rm "$ctr" >/dev/null
  check_net "$before"
  say "make test-unit exited $rc ($((SECONDS - t0)) s)"
  return "$rc"
}

clean() {
  if command -v buildah >/dev/null && [[ -d $STORE ]]; then
    "${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
    "${BUILDAH[@]}" rmi --all --force >/dev/null 2>&1 || true
  fi
  local d
  for d in "$STORE" "$WORKDIR/run" "$WORKDIR/rootfs" "$WORKDIR/pipconf"; do remove_tree "$d"; done
  say "removed the storage under $WORKDIR (logs kept in $LOG)"
}

mkdir -p "$LOG"
steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(base build test clean)
for s in "${steps[@]}"; do
  case $s in
    base | build | clean) "$s" ;;
    test) test_unit ;;
    *) die "unknown step $s (base, build, test, clean)" ;;
  esac
done
