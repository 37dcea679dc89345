#!/usr/bin/env bash
# Build the test Kubernetes control plane binaries from the Go module proxy:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
#     (k8s.io/kubernetes, pinned in tests/cluster/build/go.mod)
#   kubelet, kube-proxy (same module: the real test node, tests/support/node.py)
#   agnhost (k8s.io/kubernetes/test/images/agnhost: test server/client image)
#   pause (the pods' sandbox process, tiny main in build/pause/)
#   etcd (go.etcd.io/etcd/server/v3, same go.mod, tiny main in build/etcd/)
#   kwok (sigs.k8s.io/kwok/cmd/kwok@KWOK_VERSION via `go install`)
#   kube-router (firewall only: the real node's NetworkPolicy enforcer, via `go install`)
#
# Output: ${AGENTPLANE_CACHE:-$HOME/.cache/agentplane}/k8s-<version>/bin/
# Go module and build caches live under the same cache root (go/mod, go/build),
# so deleting the cache root removes everything this script produced.
#
# Idempotent: a stamp file (hash of the pinned inputs) in the bin dir makes
# repeat runs a no-op; they rebuild only when the pins change.
# The bin dir path is the last line printed on stdout; progress goes to stderr.
set -euo pipefail

KWOK_VERSION=v0.8.0
# kube-router enforces NetworkPolicy on the real test node (run with only its firewall on:
# --run-firewall=true --run-router=false --run-service-proxy=false). v2.1.0 is the only version
# the Go module proxy serves here and it has reported security flaws. It is acceptable as a
# TEST-ONLY enforcer: it runs only inside the test node's own network namespace, on a throwaway
# cluster, and is never shipped or deployed. Do not use this build anywhere else.
KUBE_ROUTER_VERSION=v2.1.0
# Bump to force a rebuild when changing something not captured below.
BUILD_REV=1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod_dir="$here/build"
cache_root="${AGENTPLANE_CACHE:-$HOME/.cache/agentplane}"

log() { printf 'build.sh: %s\n' "$*" >&2; }

# Host tools: flock (util-linux) and sha256sum (coreutils) are essential
# packages on Debian; install them only if somehow missing. Nothing else from
# apt is needed: CGO is off (no C toolchain) and etcd is built from source.
if ! command -v flock >/dev/null 2>&1 || ! command -v sha256sum >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    log "installing util-linux coreutils"
    apt-get update -qq >&2 && apt-get install -y -qq util-linux coreutils >&2
  else
    log "need flock (util-linux) and sha256sum (coreutils)"
    exit 1
  fi
fi

k8s_version="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$mod_dir/go.mod")"
if [[ ! "$k8s_version" =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)$ ]]; then
  log "cannot find a k8s.io/kubernetes vX.Y.Z requirement in $mod_dir/go.mod"
  exit 1
fi
k8s_major="${BASH_REMATCH[1]}"
k8s_minor="${BASH_REMATCH[2]}"

out_root="$cache_root/k8s-$k8s_version"
bin_dir="$out_root/bin"
stamp_file="$bin_dir/.stamp"
binaries=(
  etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok
  kubelet kube-proxy kube-router agnhost pause
)

stamp="$(
  {
    printf 'kwok=%s kube-router=%s rev=%s\n' "$KWOK_VERSION" "$KUBE_ROUTER_VERSION" "$BUILD_REV"
    cat "$mod_dir/go.mod" "$mod_dir/go.sum" "$mod_dir/tools.go" "$mod_dir/etcd/main.go" \
      "$mod_dir/pause/main.go"
  } | sha256sum | cut -d' ' -f1
)"

up_to_date() {
  [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]] || return 1
  local b
  for b in "${binaries[@]}"; do
    [[ -x "$bin_dir/$b" ]] || return 1
  done
}

if up_to_date; then
  log "up to date ($k8s_version, kwok $KWOK_VERSION)"
  echo "$bin_dir"
  exit 0
fi

mkdir -p "$out_root"
# Serialize concurrent builds (e.g. several pytest workers) on one lock.
exec 9>"$out_root/.build.lock"
flock 9
if up_to_date; then
  log "up to date ($k8s_version, kwok $KWOK_VERSION; built by a concurrent run)"
  echo "$bin_dir"
  exit 0
fi

# --- toolchain -------------------------------------------------------------
# Only Go is needed (CGO is disabled, no C toolchain, no apt packages).
if ! command -v go >/dev/null 2>&1; then
  export PATH="$PATH:/usr/local/go/bin"
fi
if ! command -v go >/dev/null 2>&1; then
  log "Go is required (>= the 'go' line in $mod_dir/go.mod); not found in PATH or /usr/local/go/bin"
  exit 1
fi
export GOMODCACHE="$cache_root/go/mod"
export GOCACHE="$cache_root/go/build"
export GOFLAGS="-modcacherw"
export CGO_ENABLED=0
export GOWORK=off

start=$(date +%s)
tmp_bin="$out_root/bin.tmp.$$"
trap 'rm -rf "$tmp_bin"' EXIT
rm -rf "$tmp_bin"
mkdir -p "$tmp_bin"

# Same version stamping as kubernetes' hack/lib/version.sh, so the apiserver
# reports a real version (kubectl skew checks, kwok, discovery).
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version"
  k8s_ldflags+=" -X $pkg.gitMajor=$k8s_major"
  k8s_ldflags+=" -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean"
  k8s_ldflags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

log "building kubernetes $k8s_version + etcd + pause into $bin_dir (go $(go env GOVERSION), caches in $cache_root/go)"
(
  cd "$mod_dir"
  go build -mod=readonly -trimpath -ldflags="$k8s_ldflags" -o "$tmp_bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/test/images/agnhost \
    ./etcd \
    ./pause
)

log "building kwok $KWOK_VERSION"
(
  cd "$out_root" # outside any module: `go install pkg@version` uses kwok's own go.mod/go.sum
  GOBIN="$tmp_bin" go install -trimpath \
    -ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$k8s_version" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
)

log "building kube-router $KUBE_ROUTER_VERSION (test-only NetworkPolicy enforcer, see above)"
(
  cd "$out_root" # outside any module: kube-router's own go.mod/go.sum (it has no replace directives)
  kr=github.com/cloudnativelabs/kube-router/v2
  GOBIN="$tmp_bin" go install -trimpath \
    -ldflags="-s -w -X $kr/pkg/version.Version=$KUBE_ROUTER_VERSION -X $kr/pkg/version.BuildDate=1970-01-01T00:00:00Z" \
    "$kr/cmd/kube-router@$KUBE_ROUTER_VERSION"
)

for b in "${binaries[@]}"; do
  [[ -x "$tmp_bin/$b" ]] || { log "missing $b after build"; exit 1; }
done
echo "$stamp" >"$tmp_bin/.stamp"
rm -rf "$bin_dir"
mv "$tmp_bin" "$bin_dir"
log "done in $(($(date +%s) - start))s"
echo "$bin_dir"
