#!/bin/sh
# Send what a job kept locally while the tracking/registry server was unreachable
# (`digitops sync`): runs of the train and evaluate jobs travel on in .digitops.
# Embedded backend: nothing to send. Still unreachable: said, and the job goes on.
if [ "${DIGITOPS_BACKEND:-}" = embedded ] || [ -z "${DIGITOPS_BACKEND:-}${MLFLOW_TRACKING_URI:-}${COMET_API_KEY:-}" ]; then
  exit 0
fi
digitops sync || echo "Some runs are still kept locally (server unreachable); they travel on in .digitops."
