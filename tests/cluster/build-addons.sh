#!/usr/bin/env bash
# Build (once, cached) the third-party Kubernetes add-ons the tests use, all
# from the Go module proxy:
#   kstatus  the kstatus CLI (tests/cluster/addons/kstatus: sigs.k8s.io/cli-utils'
#            pkg/kstatus/status, what Flux's health checks compute)
#   traefik  Traefik v3 with its Kubernetes Gateway API provider
#            (tests/cluster/addons/traefik; static, CGO off)
#   crds     CRD manifests copied out of upstream module zips (CRD_PINS below)
#   actionlint  the GitHub Actions workflow linter `make lint` runs on
#            .github/workflows (tests/cluster/addons/actionlint)
#
# Usage: build-addons.sh [kstatus|traefik|crds|actionlint|all]...   (default: all)
#        build-addons.sh tidy     # maintainers: regenerate the go.mod/go.sum files
#
# Output: ${AGENTPLANE_CACHE:-$HOME/.cache/agentplane}/addons/<component>/, one
# line per requested component on stdout (progress goes to stderr):
#   kstatus/kstatus   traefik/traefik   crds/<set>/*.yaml
# Go module and build caches are those of build.sh (go/mod, go/build under the
# same root), so Kubernetes' build warms ours and deleting the root removes all.
#
# Exit status 3: Go is missing (the tests skip, or fail under CI=true).
#
# Idempotent: each component has a stamp (hash of its pinned inputs) and a lock;
# a warm run is a stamp check.
set -euo pipefail

# CRD sets: "set module@version path-in-module-zip..." (globs allowed).
# secrets-store-csi-driver: the proxy serves v1.5.3 but not v1.5.4 (no checksum).
# source-controller: v1.10.x needs Go 1.27; v1.9.6 is the newest for Go 1.26.
# prometheus-operator: the proxy lists only v0.85.0; v0.90.1 is served by name.
CRD_PINS=(
  "gateway-api sigs.k8s.io/gateway-api@v1.6.3 config/crd/standard/gateway.networking.k8s.io_*.yaml"
  "prometheus-operator github.com/prometheus-operator/prometheus-operator@v0.90.1 example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"
  "secrets-store-csi-driver sigs.k8s.io/secrets-store-csi-driver@v1.5.3 config/crd/bases/secrets-store.csi.x-k8s.io_*.yaml"
  "flux-source github.com/fluxcd/source-controller@v1.9.6 config/crd/bases/source.toolkit.fluxcd.io_gitrepositories.yaml"
)
# Not CRDs, so left out of the gateway-api set: the ValidatingAdmissionPolicy
# that guards against mixing channels (gateway.networking.k8s.io_vap_*.yaml).
CRD_EXCLUDE='*_vap_*'

# lego DNS-challenge providers whose SDK modules the proxy does not serve
# (see tests/cluster/addons/traefik/go.mod); dropped from lego's provider switch.
LEGO_DROP="edgedns azion dnsimple alidns aliesa tencentcloud edgeone huaweicloud oraclecloud regfish sakuracloud ucloud yandexcloud"

# Bump to force a rebuild of one component when changing something not hashed.
KSTATUS_REV=1
TRAEFIK_REV=1
CRDS_REV=1
ACTIONLINT_REV=1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src_root="$here/addons"
cache_root="${AGENTPLANE_CACHE:-$HOME/.cache/agentplane}"
out_root="$cache_root/addons"

log() { printf 'build-addons.sh: %s\n' "$*" >&2; }

setup_go() {
  if ! command -v go >/dev/null 2>&1; then
    export PATH="$PATH:/usr/local/go/bin"
  fi
  if ! command -v go >/dev/null 2>&1; then
    log "Go is required (>= the 'go' line of the modules in $src_root); not found in PATH or /usr/local/go/bin"
    exit 3
  fi
  export GOMODCACHE="$cache_root/go/mod"
  export GOCACHE="$cache_root/go/build"
  export GOFLAGS="-modcacherw"
  export CGO_ENABLED=0
  export GOWORK=off
}

# Directory of module@version in the module cache (downloaded and checksummed
# against the checksum database if missing).
module_dir() {
  local json dir
  json="$(go mod download -json "$1")"
  dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$json")"
  if [[ -z "$dir" || ! -d "$dir" ]]; then
    log "cannot download $1:"
    printf '%s\n' "$json" >&2
    return 1
  fi
  echo "$dir"
}

require_version() { # module go.mod -> version required there
  awk -v m="$1" '($1 == m && $2 ~ /^v/) { print $2; exit } ($1 == "require" && $2 == m) { print $3; exit }' "$2"
}

# Run "builder out_dir" under the component's lock unless its stamp matches.
cached() {
  local name="$1" stamp="$2" builder="$3"
  local dir="$out_root/$name"
  if [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$stamp" ]]; then
    log "$name up to date"
    echo "$dir"
    return 0
  fi
  mkdir -p "$out_root"
  (
    exec 9>"$out_root/.$name.lock"
    flock 9
    if [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$stamp" ]]; then
      log "$name up to date (built by a concurrent run)"
      exit 0
    fi
    setup_go
    local tmp="$out_root/$name.tmp.$$" start
    start=$(date +%s)
    rm -rf "$tmp"
    mkdir -p "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    "$builder" "$tmp"
    echo "$stamp" >"$tmp/.stamp"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    log "$name built in $(($(date +%s) - start))s"
  )
  echo "$dir"
}

# --- kstatus ----------------------------------------------------------------

kstatus_stamp() {
  { echo "rev=$KSTATUS_REV"; cat "$src_root/kstatus/go.mod" "$src_root/kstatus/go.sum" "$src_root/kstatus/main.go"; } |
    sha256sum | cut -d' ' -f1
}

build_kstatus() {
  log "building kstatus (sigs.k8s.io/cli-utils $(require_version sigs.k8s.io/cli-utils "$src_root/kstatus/go.mod"))"
  (cd "$src_root/kstatus" && go build -mod=readonly -trimpath -ldflags="-s -w" -o "$1/kstatus" .)
}

# --- actionlint -------------------------------------------------------------

actionlint_stamp() {
  local d="$src_root/actionlint"
  { echo "rev=$ACTIONLINT_REV"; cat "$d/go.mod" "$d/go.sum" "$d/tools.go"; } | sha256sum | cut -d' ' -f1
}

build_actionlint() {
  local version
  version="$(require_version github.com/rhysd/actionlint "$src_root/actionlint/go.mod")"
  log "building actionlint $version"
  (cd "$src_root/actionlint" && go build -mod=readonly -trimpath \
    -ldflags="-s -w -X github.com/rhysd/actionlint.version=$version" \
    -o "$1/actionlint" github.com/rhysd/actionlint/cmd/actionlint)
}

# --- traefik ----------------------------------------------------------------

traefik_stamp() {
  local d="$src_root/traefik"
  { echo "rev=$TRAEFIK_REV drop=$LEGO_DROP"; cat "$d/go.mod" "$d/go.sum" "$d/tools.go" "$d/ext/go.mod" "$d/ext/ext.go"; } |
    sha256sum | cut -d' ' -f1
}

# lego's generated provider switch without the LEGO_DROP providers: their
# import lines and their `case ...: return <name>.NewDNSProvider()` pairs.
patch_lego_providers() {
  awk -v drop="$LEGO_DROP" '
    BEGIN { n = split(drop, d, " "); for (i = 1; i <= n; i++) gone[d[i]] = 1 }
    { line[NR] = $0 }
    END {
      for (i = 1; i <= NR; i++) {
        l = line[i]
        if (l ~ /^\t"github\.com\/go-acme\/lego\/v5\/providers\/dns\/[a-z0-9]+"$/) {
          name = l; sub(/.*\/dns\//, "", name); sub(/"$/, "", name)
          if (name in gone) { dropped++; continue }
        }
        if (i < NR && l ~ /^\tcase / && line[i + 1] ~ /^\t\treturn [a-z0-9]+\.NewDNSProvider\(\)$/) {
          name = line[i + 1]; sub(/^\t\treturn /, "", name); sub(/\..*/, "", name)
          if (name in gone) { i++; dropped++; continue }
        }
        print l
      }
      if (dropped != 2 * n) { print "dropped " dropped " lines, expected " 2 * n > "/dev/stderr"; exit 1 }
    }'
}

# Lay out the traefik module in $1: our go.mod/go.sum/tools.go/ext plus ./lego,
# lego from the module cache with the patched provider switch.
traefik_source() {
  local work="$1" lego_version lego_dir gen
  cp -R "$src_root/traefik/." "$work/"
  lego_version="$(require_version github.com/go-acme/lego/v5 "$work/go.mod")"
  lego_dir="$(module_dir "github.com/go-acme/lego/v5@$lego_version")"
  cp -R "$lego_dir" "$work/lego"
  chmod -R u+w "$work/lego"
  gen="$work/lego/providers/dns/zz_gen_dns_providers.go"
  patch_lego_providers <"$lego_dir/providers/dns/zz_gen_dns_providers.go" >"$gen"
}

build_traefik() {
  local out="$1" version
  version="$(require_version github.com/traefik/traefik/v3 "$src_root/traefik/go.mod")"
  log "building traefik $version (go $(go env GOVERSION); a cold build takes several minutes)"
  mkdir -p "$out/src"
  traefik_source "$out/src"
  (
    cd "$out/src"
    go build -mod=readonly -trimpath \
      -ldflags="-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$version -X github.com/traefik/traefik/v3/pkg/version.BuildDate=1970-01-01T00:00:00Z" \
      -o "$out/traefik" github.com/traefik/traefik/v3/cmd/traefik
  )
  rm -rf "$out/src"
}

# --- crds -------------------------------------------------------------------

crds_stamp() {
  { echo "rev=$CRDS_REV exclude=$CRD_EXCLUDE"; printf '%s\n' "${CRD_PINS[@]}"; } | sha256sum | cut -d' ' -f1
}

build_crds() {
  local out="$1" pin set module rest dir pattern f n
  for pin in "${CRD_PINS[@]}"; do
    read -r set module rest <<<"$pin"
    log "crds: $set from $module"
    dir="$(module_dir "$module")"
    mkdir -p "$out/$set"
    n=0
    for pattern in $rest; do
      for f in "$dir"/$pattern; do
        [[ -f "$f" ]] || { log "$module has no $pattern"; return 1; }
        # shellcheck disable=SC2254
        case "$(basename "$f")" in $CRD_EXCLUDE) continue ;; esac
        cp "$f" "$out/$set/"
        chmod u+w "$out/$set/$(basename "$f")"
        n=$((n + 1))
      done
    done
    printf '%s\n' "$module" >"$out/$set/.source"
    log "crds: $set: $n files"
  done
}

# --- tidy (maintainers) -----------------------------------------------------

tidy() {
  setup_go
  log "tidy kstatus"
  (cd "$src_root/kstatus" && go mod tidy)
  log "tidy actionlint"
  (cd "$src_root/actionlint" && go mod tidy)
  log "tidy traefik (in a scratch copy with ./lego laid out)"
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  traefik_source "$work"
  (cd "$work" && go mod tidy)
  cp "$work/go.mod" "$work/go.sum" "$src_root/traefik/"
}

# --- main -------------------------------------------------------------------

if ! command -v flock >/dev/null 2>&1 || ! command -v sha256sum >/dev/null 2>&1; then
  log "need flock (util-linux) and sha256sum (coreutils)"
  exit 1
fi

components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(all)
for c in "${components[@]}"; do
  case "$c" in
    kstatus) cached kstatus "$(kstatus_stamp)" build_kstatus ;;
    traefik) cached traefik "$(traefik_stamp)" build_traefik ;;
    crds) cached crds "$(crds_stamp)" build_crds ;;
    actionlint) cached actionlint "$(actionlint_stamp)" build_actionlint ;;
    all)
      cached kstatus "$(kstatus_stamp)" build_kstatus
      cached crds "$(crds_stamp)" build_crds
      cached actionlint "$(actionlint_stamp)" build_actionlint
      cached traefik "$(traefik_stamp)" build_traefik
      ;;
    tidy) tidy ;;
    *)
      log "unknown component '$c' (kstatus, traefik, crds, actionlint, all, tidy)"
      exit 2
      ;;
  esac
done
