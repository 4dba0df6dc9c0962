#!/usr/bin/env bash
# Install (or upgrade) the KubeRay operator and its CRDs from the official Helm chart, pinned.
#   bash infra/operator/install.sh            # into namespace ray-system
# Needs helm >= 3 and a kubeconfig for the target cluster.
set -euo pipefail

KUBERAY_CHART_VERSION=1.7.1
NAMESPACE="${KUBERAY_NAMESPACE:-ray-system}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update
helm repo update kuberay
helm upgrade --install kuberay-operator kuberay/kuberay-operator \
  --version "${KUBERAY_CHART_VERSION}" \
  --namespace "${NAMESPACE}" --create-namespace \
  --values "${HERE}/values.yaml" \
  --wait --timeout 5m
kubectl -n "${NAMESPACE}" rollout status deployment/kuberay-operator --timeout=180s
kubectl get crd rayclusters.ray.io rayjobs.ray.io rayservices.ray.io
