#!/bin/sh
# Roll out the dashboard image to the cluster of the current kubectl context.
#   deploy/deploy.sh IMAGE            e.g. registry.gitlab.com/group/digitops/dashboard:abc123
# KUBE_NAMESPACE picks the namespace (default: digitops). Used by the CI deploy-dashboard job.
set -eu
image="${1:?usage: deploy/deploy.sh IMAGE}"
ns="${KUBE_NAMESPACE:-digitops}"
here="$(cd "$(dirname "$0")" && pwd)"

kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns"
kubectl -n "$ns" apply -f "$here/k8s/configmap.yaml" -f "$here/k8s/service.yaml"
# Set the image before applying, so one rollout starts, with the right image.
kubectl set image --local -f "$here/k8s/deployment.yaml" "dashboard=$image" -o yaml \
  | kubectl -n "$ns" apply -f -
kubectl -n "$ns" rollout status deployment/digitops-dashboard --timeout=600s
