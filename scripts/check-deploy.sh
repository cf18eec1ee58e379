#!/usr/bin/env bash
# Renders and validates every deployment artefact offline: no cluster, no Docker engine, no
# Grafana, no network. CI runs `scripts/install-deploy-tools.sh && scripts/check-deploy.sh`.
#
#   Helm chart       helm lint --strict; helm template with values.yaml (CPU), values-gpu.yaml,
#                    and a variant with API keys and a model PVC
#   kustomize        kubectl kustomize deploy/k8s/overlays/{cpu,gpu}
#   every manifest   Kubernetes JSON schemas (strict) for $GRAIN_K8S_VERSIONS, a bundled schema
#                    for the ServiceMonitor CRD, and cross-object rules (deploy/checks)
#   Prometheus       promtool check config / check rules / test rules, metric-usage lint
#   Grafana          dashboard structure and queries (deploy/checks/check_dashboard.py)
#   Docker           hadolint on both Dockerfiles; docker-compose config + wiring checks
#   the checkers     their own unit tests, and shellcheck on these scripts
#
# Set GRAIN_DEPLOY_OUT=DIR to keep the rendered manifests. Exits non-zero if any step fails.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${GRAIN_DEPLOY_TOOLS:-$REPO/.venv-deploy}"
K8S_VERSIONS="${GRAIN_K8S_VERSIONS:-1.29,1.37}"
PY="$TOOLS/bin/python"
HELM="$TOOLS/bin/helm"
KUBECTL="$TOOLS/bin/kubectl"
HADOLINT="$TOOLS/bin/hadolint"
CHECKS="$REPO/deploy/checks"
CHART="$REPO/deploy/helm/grain"

if [ -n "${GRAIN_DEPLOY_OUT:-}" ]; then
    OUT="$GRAIN_DEPLOY_OUT"
    mkdir -p "$OUT"
else
    OUT="$(mktemp -d)"
    trap 'rm -rf "$OUT"' EXIT
fi
cd "$REPO" || exit 1

for tool in "$PY" "$HELM" "$KUBECTL" "$HADOLINT"; do
    if [ ! -x "$tool" ]; then
        echo "missing $tool: run scripts/install-deploy-tools.sh first" >&2
        exit 2
    fi
done
for tool in promtool docker-compose shellcheck; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "missing $tool: run scripts/install-deploy-tools.sh first" >&2
        exit 2
    fi
done

SUMMARY=()
FAILED=0

# step NAME COMMAND...: runs one check, shows its output indented, records PASS/FAIL.
step() {
    local name="$1" start rc log
    shift
    log="$OUT/step.log"
    start=$SECONDS
    "$@" >"$log" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        SUMMARY+=("PASS  $name ($((SECONDS - start))s)")
        printf '== PASS  %s\n' "$name"
    else
        SUMMARY+=("FAIL  $name (exit $rc)")
        printf '== FAIL  %s (exit %s)\n' "$name" "$rc"
        FAILED=1
    fi
    sed 's/^/     /' "$log"
}

# shellcheck disable=SC2317  # called indirectly, through step()
checker() { "$PY" "$CHECKS/$1" "${@:2}"; }

# Renders to a file; a failed render leaves no file, so later validation of it fails too.
# shellcheck disable=SC2317  # called indirectly, through step()
render() {
    local out="$1"
    shift
    "$@" >"$out.tmp" && mv "$out.tmp" "$out"
}

step "checker self-tests" "$PY" -m unittest discover -s "$CHECKS" -p 'test_*.py'

step "helm lint (cpu values)" "$HELM" lint --strict "$CHART"
step "helm lint (gpu values)" "$HELM" lint --strict "$CHART" -f "$CHART/values-gpu.yaml"
step "helm template (cpu)" render "$OUT/helm-cpu.yaml" "$HELM" template grain "$CHART"
step "helm template (gpu)" render "$OUT/helm-gpu.yaml" "$HELM" template grain "$CHART" -f "$CHART/values-gpu.yaml"
step "helm template (cpu, api keys + model PVC)" render "$OUT/helm-cpu-keys.yaml" \
    "$HELM" template prod "$CHART" --namespace llm \
    --set 'apiKeys.keys={key-one,key-two}' --set cache.existingClaim=grain-models
step "kustomize overlays/cpu" render "$OUT/kustomize-cpu.yaml" "$KUBECTL" kustomize deploy/k8s/overlays/cpu
step "kustomize overlays/gpu" render "$OUT/kustomize-gpu.yaml" "$KUBECTL" kustomize deploy/k8s/overlays/gpu

ADAPTER="$REPO/deploy/prometheus-adapter/values.yaml"
step "validate cpu manifests (k8s $K8S_VERSIONS)" checker check_manifests.py --flavor cpu --k8s "$K8S_VERSIONS" \
    --adapter "$ADAPTER" "$OUT/kustomize-cpu.yaml" "$OUT/helm-cpu.yaml" "$OUT/helm-cpu-keys.yaml"
step "validate gpu manifests (k8s $K8S_VERSIONS)" checker check_manifests.py --flavor gpu --k8s "$K8S_VERSIONS" \
    --adapter "$ADAPTER" "$OUT/kustomize-gpu.yaml" "$OUT/helm-gpu.yaml"

step "promtool check config" promtool check config deploy/prometheus/prometheus.yml
step "promtool check rules" promtool check rules deploy/prometheus/alerts.yml
step "promtool test rules" promtool test rules deploy/prometheus/alerts_test.yml
step "alert rules use Grain metrics correctly" checker check_rules.py deploy/prometheus/alerts.yml --repo "$REPO"
step "grafana dashboard" checker check_dashboard.py deploy/grafana/grain.json --repo "$REPO"

step "hadolint Dockerfiles" "$HADOLINT" --config docker/.hadolint.yaml docker/Dockerfile docker/Dockerfile.cuda
step "docker-compose config (cpu, gpu override)" bash -c \
    'docker-compose -f docker/compose.yaml config -q && docker-compose -f docker/compose.yaml -f docker/compose.gpu.yaml config -q'
step "compose wiring" checker check_compose.py docker/compose.yaml
step "shellcheck deploy scripts" shellcheck scripts/check-deploy.sh scripts/install-deploy-tools.sh

echo
echo "deploy checks summary:"
printf '  %s\n' "${SUMMARY[@]}"
passed=$(printf '%s\n' "${SUMMARY[@]}" | grep -c '^PASS')
total=${#SUMMARY[@]}
echo "deploy-checks: $passed passed, $((total - passed)) failed"
exit "$FAILED"
