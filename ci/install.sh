#!/bin/sh
# Install digitops in a CI job (every job's before_script):
#   DIGITOPS_SKIP_INSTALL=true   nothing (the image or the runner has it already);
#   the CI image (ci/Dockerfile, DIGITOPS_CI_DEPS set): the package only, its dependencies are
#                                baked in; if they no longer match pyproject.toml, install them;
#   otherwise                    `pip install -e $DIGITOPS_PIP_SPEC` (default "."): everything,
#                                with uv (DIGITOPS_INSTALLER=uv, the default) because it installs
#                                the same versions about 4x faster (bench/bench_ci.py); if uv
#                                cannot be had or fails, with pip (DIGITOPS_INSTALLER=pip: always).
set -eu
if [ "${DIGITOPS_SKIP_INSTALL:-false}" = "true" ]; then exit 0; fi
spec="${DIGITOPS_PIP_SPEC:-.}"
if [ -n "${DIGITOPS_CI_DEPS:-}" ] && [ "$spec" = "." ]; then
  python -m pip install --quiet --no-deps --no-build-isolation -e .
  if python -m pip check >/dev/null 2>&1; then exit 0; fi
  echo "ci/install.sh: the image's packages do not satisfy pyproject.toml; installing the rest"
fi
if [ "${DIGITOPS_INSTALLER:-uv}" = "uv" ]; then
  # uv reads its own settings: a runner's package mirror, set for pip, applies to it too.
  if [ -n "${PIP_INDEX_URL:-}" ] && [ -z "${UV_DEFAULT_INDEX:-}" ]; then export UV_DEFAULT_INDEX="$PIP_INDEX_URL"; fi
  if [ -n "${PIP_EXTRA_INDEX_URL:-}" ] && [ -z "${UV_INDEX:-}" ]; then export UV_INDEX="$PIP_EXTRA_INDEX_URL"; fi
  # Into the interpreter the job runs (a venv or the image's own Python), never a new venv.
  py=$(python -c 'import sys; print(sys.executable)')
  if python -m pip install --quiet "${DIGITOPS_UV_SPEC:-uv==0.13.9}"; then
    if python -m uv pip install --quiet --python "$py" -e "$spec"; then exit 0; else rc=$?; fi
    echo "ci/install.sh: uv failed (exit $rc); installing with pip"
  else
    echo "ci/install.sh: uv could not be installed; installing with pip"
  fi
fi
python -m pip install --quiet -e "$spec"
