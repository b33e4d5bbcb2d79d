#!/usr/bin/env bash
# Builds rampart's container image with podman on this machine, pulling nothing, and checks
# that it runs: `scripts/image.sh [build|check|all]` (default all).
#
# build: a Debian bookworm base bootstrapped with debootstrap from the Debian archive
#   (minbase, ca-certificates, user and group rampart 10001), imported as
#   localhost/rampart-base:bookworm; then Containerfile.runtime: that base, the binary built on
#   the host (PROFILE=release by default; CI packs the debug build its tests already made) and
#   the shipped rules, as localhost/rampart:latest.
# check: runs the image as its non-root user on the host network, with the listeners moved to
#   free ports and a Python HTTP server standing in for LiteLLM, and shows: /live answers, the
#   process runs as uid 10001, a request is proxied, a refused one is refused, and an edit of
#   the mounted rules is reloaded (POST /reload or the file watcher: a new generation, the
#   edit in force).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
WORK=target/image
BASE=localhost/rampart-base:bookworm
IMAGE=localhost/rampart:latest
what=${1:-all}
need() { command -v "$1" >/dev/null || { echo "image: $1 is missing (apt-get install $2)" >&2; exit 1; }; }
need podman podman
need debootstrap debootstrap

build_base() {
  if podman image exists "$BASE"; then echo "image: $BASE exists"; return; fi
  local rootfs=$WORK/rootfs
  rm -rf "$rootfs" && mkdir -p "$rootfs"
  echo "image: bootstrapping Debian bookworm into $rootfs"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log"
  chroot "$rootfs" groupadd --system --gid 10001 rampart
  chroot "$rootfs" useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin rampart 2>/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/locale "$rootfs"/debootstrap
  tar -C "$rootfs" -c . | podman import --quiet - "$BASE" >/dev/null
  rm -rf "$rootfs"
  echo "image: $BASE imported"
}

build_image() {
  local flag=()
  [ "$PROFILE" = release ] && flag=(--release)
  cargo build "${flag[@]}" -p rampart --bin rampart
  local ctx=$WORK/context
  rm -rf "$ctx" && mkdir -p "$ctx"
  strip -o "$ctx/rampart" "${CARGO_TARGET_DIR:-target}/$PROFILE/rampart"
  cp -r rules "$ctx/rules"
  podman build --quiet --file Containerfile.runtime --tag "$IMAGE" "$ctx" >/dev/null
  echo "image: $IMAGE built ($(podman image inspect "$IMAGE" --format '{{.Size}}') bytes)"
}

# Machines like this one (a Firecracker VM) run cgroups in hybrid mode with a controller left
# on the v2 hierarchy, which crun refuses ("cgroups in hybrid mode not supported"); mounting a
# v1 hierarchy for it moves it off v2. And without CAP_SYS_RESOURCE, podman's default limits
# (raised RLIMIT_NOFILE and RLIMIT_NPROC) cannot be set: the run lowers them instead.
prepare_host() {
  # Read, not tested with -s: a cgroup file reports a size of 0 whatever it holds.
  local controllers
  controllers=$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null || true)
  if [ -n "$controllers" ] && [ "$(id -u)" -eq 0 ]; then
    for c in $controllers; do
      echo "image: moving cgroup controller $c from the v2 hierarchy to a v1 one (crun refuses hybrid mode)"
      mkdir -p "/sys/fs/cgroup/$c" && mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c"
    done
  fi
}
RUN_FLAGS=(--ulimit nofile=16384:16384 --ulimit nproc=8192:8192)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

check_image() {
  prepare_host
  local web lf vm admin upstream rules name=rampart-image-check
  web=$(free_port) lf=$(free_port) vm=$(free_port) admin=$(free_port) upstream=$(free_port)
  rules=$(mktemp -d) && cp -r rules/. "$rules/" && chmod -R a+rX "$rules"
  sed -i "s/127.0.0.1:4000/127.0.0.1:$upstream/" "$rules/gateway.toml"
  mkdir -p "$rules/www/v1" && echo '{"data":[]}' >"$rules/www/v1/models"
  python3 -m http.server "$upstream" --bind 127.0.0.1 --directory "$rules/www" >/dev/null 2>&1 &
  local server=$!
  trap "podman rm -f $name >/dev/null 2>&1; kill $server 2>/dev/null; rm -rf $rules" EXIT
  podman rm -f "$name" >/dev/null 2>&1 || true
  podman run -d --name "$name" --network host "${RUN_FLAGS[@]}" \
    -e RAMPART_ORIGIN_VERIFY_SECRET=image-check-origin-0123456789 \
    -e RAMPART_ADMIN_HEADER_SECRET=image-check-admin-0123456789 \
    -v "$rules:/etc/rampart/rules:ro" "$IMAGE" \
    --rules /etc/rampart/rules --admin "127.0.0.1:$admin" \
    --listen "web=127.0.0.1:$web" --listen "langfuse=127.0.0.1:$lf" --listen "victoriametrics=127.0.0.1:$vm" >/dev/null
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/live" >/dev/null 2>&1 && break; sleep 0.1; done
  local ok=0
  step() { if eval "$2"; then echo "image check: ok   $1"; else echo "image check: FAIL $1"; ok=1; fi; }
  step "/live answers 200" "curl -fs http://127.0.0.1:$admin/live >/dev/null"
  step "the process runs as uid 10001, not root" "[ \"\$(podman top $name huser | tail -1)\" = 10001 ] || [ \"\$(podman top $name user | tail -1)\" = rampart ]"
  local h=(-H "Host: gateway.example.com" -H "User-Agent: Mozilla/5.0 (X11; Linux x86_64)" -H "X-Origin-Verify: image-check-origin-0123456789")
  step "a request is proxied to the upstream" "curl -fs ${h[*]@Q} http://127.0.0.1:$web/v1/models | grep -q data"
  step "an attack is refused (403)" "[ \"\$(curl -s -o /dev/null -w '%{http_code}' ${h[*]@Q} 'http://127.0.0.1:$web/v1/models?q=1%27%20UNION%20SELECT%20password%20FROM%20users--')\" = 403 ]"
  step "without X-Origin-Verify: 403" "[ \"\$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$web/v1/models)\" = 403 ]"
  # Edit the mounted rules: block the path the upstream serves, and reload.
  sed -i 's|^prefix = "/grafana/"|prefix = "/v1/"\nupstream = "grafana"\n\n[[listeners.routes]]\nprefix = "/grafana/"|' "$rules/gateway.toml"
  step "POST /reload takes the edit" "curl -fs -X POST http://127.0.0.1:$admin/reload | grep -q generation"
  step "the edit is in force (/v1/ now routed to grafana, which is down: 502)" "[ \"\$(curl -s -o /dev/null -w '%{http_code}' ${h[*]@Q} http://127.0.0.1:$web/v1/models)\" = 502 ]"
  # The file watcher may take the edit too, before or after the POST: a generation past 1.
  step "a new generation in /metrics" "curl -fs http://127.0.0.1:$admin/metrics | awk '/^rampart_config_generation /{g = \$2} END {exit !(g > 1)}'"
  [ $ok -eq 0 ] || { podman logs "$name" | tail -20; exit 1; }
  echo "image check: $IMAGE serves, as uid 10001, and reloads mounted rules"
}

mkdir -p "$WORK"
case $what in
  build) build_base; build_image ;;
  check) check_image ;;
  all) build_base; build_image; check_image ;;
  *) echo "usage: scripts/image.sh [build|check|all]" >&2; exit 2 ;;
esac
