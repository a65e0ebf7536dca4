#!/bin/sh
# Roll out the dashboard image to the cluster of the current kubectl context.
#   deploy/deploy.sh IMAGE            e.g. registry.gitlab.com/group/digitops/dashboard:abc123
# KUBE_NAMESPACE picks the namespace (default: digitops). Used by the CI deploy-dashboard job.
set -eu
image="${1:?usage: deploy/deploy.sh IMAGE}"
ns="${KUBE_NAMESPACE:-digitops}"
here="$(cd "$(dirname "$0")" && pwd)"

kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns"

# MLflow backend (DIGITOPS_BACKEND=gitlab, or mlflow with MLFLOW_TRACKING_URI): the dashboard reads the production version
# from the same registry, with DASHBOARD_MLFLOW_TOKEN (a read token; default: the CI's token).
# The values go through files, never a command line, into the secret digitops-mlflow.
if [ "$(python -c 'from digitops import config; print(config.backend())')" = mlflow ]; then
  secrets="$(mktemp -d)"
  trap 'rm -rf "$secrets"' EXIT
  printf mlflow > "$secrets/backend"
  python -c 'from digitops import config; print(config.mlflow_endpoint()[0], end="")' > "$secrets/tracking_uri"
  ( umask 077; printf '%s' "${DASHBOARD_MLFLOW_TOKEN:-${MLFLOW_TRACKING_TOKEN:-${GITLAB_TOKEN:-}}}" > "$secrets/token" )
  kubectl -n "$ns" create secret generic digitops-mlflow --from-file="$secrets/backend" \
    --from-file="$secrets/tracking_uri" --from-file="$secrets/token" --dry-run=client -o yaml \
    | kubectl -n "$ns" apply -f - >/dev/null
fi
kubectl -n "$ns" apply -f "$here/k8s/configmap.yaml" -f "$here/k8s/service.yaml"
# Set the image before applying, so one rollout starts, with the right image.
kubectl set image --local -f "$here/k8s/deployment.yaml" "dashboard=$image" -o yaml \
  | kubectl -n "$ns" apply -f -
kubectl -n "$ns" rollout status deployment/digitops-dashboard --timeout=600s
