#!/bin/sh
# Install digitops in a CI job (every job's before_script):
#   DIGITOPS_SKIP_INSTALL=true   nothing (the image or the runner has it already);
#   the CI image (ci/Dockerfile, DIGITOPS_CI_DEPS set): the package only, its dependencies are
#                                baked in; if they no longer match pyproject.toml, install them;
#   otherwise                    `pip install -e $DIGITOPS_PIP_SPEC` (default "."): everything.
set -eu
if [ "${DIGITOPS_SKIP_INSTALL:-false}" = "true" ]; then exit 0; fi
spec="${DIGITOPS_PIP_SPEC:-.}"
if [ -n "${DIGITOPS_CI_DEPS:-}" ] && [ "$spec" = "." ]; then
  python -m pip install --quiet --no-deps --no-build-isolation -e .
  if python -m pip check >/dev/null 2>&1; then exit 0; fi
  echo "ci/install.sh: the image's packages do not satisfy pyproject.toml; installing the rest"
fi
python -m pip install --quiet -e "$spec"
