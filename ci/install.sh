#!/bin/sh
# Install digitops in a CI job (every job's before_script):
#   DIGITOPS_SKIP_INSTALL=true   nothing (the image or the runner has it already);
#   the CI image (ci/Dockerfile, DIGITOPS_CI_DEPS set): the package only, its dependencies are
#                                baked in; if they no longer match pyproject.toml, install them;
#   otherwise                    `pip install -e $DIGITOPS_PIP_SPEC` (default "."): everything,
#                                with uv (DIGITOPS_INSTALLER=uv, the default) because it installs
#                                the same versions in about a seventh of the time (bench/bench_ci.py); if uv
#                                cannot be had or fails, with pip (DIGITOPS_INSTALLER=pip: always).
# DIGITOPS_INSTALL_WITHOUT (names as pyproject.toml spells them, e.g. "tensorflow-cpu keras"):
#   the core dependencies less these, for a job whose commands never import them (the report
#   job: tests/test_ci_image.py runs its commands with them unimportable).
set -eu
if [ "${DIGITOPS_SKIP_INSTALL:-false}" = "true" ]; then exit 0; fi
spec="${DIGITOPS_PIP_SPEC:-.}"
if [ -n "${DIGITOPS_CI_DEPS:-}" ] && [ "$spec" = "." ]; then
  python -m pip install --quiet --no-deps --no-build-isolation -e .
  if python -m pip check >/dev/null 2>&1; then exit 0; fi
  echo "ci/install.sh: the image's packages do not satisfy pyproject.toml; installing the rest"
fi

installer="${DIGITOPS_INSTALLER:-uv}"
if [ "$installer" = "uv" ]; then
  # uv reads its own settings: a runner's package mirror, set for pip, applies to it too.
  if [ -n "${PIP_INDEX_URL:-}" ] && [ -z "${UV_DEFAULT_INDEX:-}" ]; then export UV_DEFAULT_INDEX="$PIP_INDEX_URL"; fi
  if [ -n "${PIP_EXTRA_INDEX_URL:-}" ] && [ -z "${UV_INDEX:-}" ]; then export UV_INDEX="$PIP_EXTRA_INDEX_URL"; fi
  # Into the interpreter the job runs (a venv or the image's own Python), never a new venv.
  py=$(python -c 'import sys; print(sys.executable)')
  if ! python -m pip install --quiet "${DIGITOPS_UV_SPEC:-uv==0.13.9}"; then
    echo "ci/install.sh: uv could not be installed; installing with pip"
    installer=pip
  fi
fi

install() {
  if [ "$installer" = "uv" ]; then
    if python -m uv pip install --quiet --python "$py" "$@"; then return 0; else rc=$?; fi
    echo "ci/install.sh: uv failed (exit $rc); installing with pip"
    installer=pip
  fi
  python -m pip install --quiet "$@"
}

without="${DIGITOPS_INSTALL_WITHOUT:-}"
if [ -n "$without" ] && [ "$spec" = "." ]; then
  reqs=$(mktemp "${TMPDIR:-/tmp}/digitops-requirements-XXXXXX")
  trap 'rm -f "$reqs"' EXIT
  python - "$without" > "$reqs" <<'PY'
import re, sys, tomllib

def name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]+)", requirement).group(1)).lower()

left_out = {name(n) for n in sys.argv[1].split()}
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
unknown = left_out - {name(d) for d in deps}
if unknown:
    sys.exit(f"ci/install.sh: DIGITOPS_INSTALL_WITHOUT names what pyproject.toml does not list: {' '.join(sorted(unknown))}")
print("\n".join(d for d in deps if name(d) not in left_out))
PY
  install -r "$reqs"
  install --no-deps -e .
  echo "ci/install.sh: installed without $without"
else
  install -e "$spec"
fi
