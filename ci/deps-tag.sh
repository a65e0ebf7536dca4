#!/bin/sh
# The CI image's tag: a hash of the files that decide its contents. Both the job that builds
# the image and the job that picks it call this, so they always agree.
set -eu
cd "$(dirname "$0")/.."
printf 'deps-%s\n' "$(cat pyproject.toml ci/Dockerfile | sha256sum | cut -c1-16)"
