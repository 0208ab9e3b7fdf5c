#!/usr/bin/env bash
# The Kubernetes manifests, offline: renders each kustomization in deploy/kubernetes with
# `kubectl kustomize` (Debian's kubernetes-client when no kubectl is installed) and checks every
# resource against the Kubernetes JSON schemas of several versions with kubernetes-validate (PyPI),
# strictly (an unknown field is an error). The ServiceMonitor is a CRD those schemas lack: its shape
# and its agreement with the Service and the flags are checked by tests/deploy.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v kubectl >/dev/null 2>&1; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq kubernetes-client
fi
command -v kubernetes-validate >/dev/null 2>&1 || python3 -m pip install -q kubernetes-validate
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for dir in base tls; do
  kubectl kustomize "deploy/kubernetes/$dir" >"$OUT/$dir.yaml" 2>"$OUT/$dir.err" || { cat "$OUT/$dir.err" >&2; exit 1; }
  for version in 1.29.0 1.32.0; do
    kubernetes-validate --strict --quiet -k "$version" "$OUT/$dir.yaml"
  done
  echo "deploy/kubernetes/$dir: $(grep -c '^kind:' "$OUT/$dir.yaml") resources valid against Kubernetes 1.29 and 1.32"
done
kubectl kustomize deploy/kubernetes/monitoring >"$OUT/monitoring.yaml"
grep -q '^kind: ServiceMonitor' "$OUT/monitoring.yaml"
echo "deploy/kubernetes/monitoring: renders"
