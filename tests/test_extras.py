"""Commands that need an extra say which one, in one line, when it is not installed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from digitops import extras

#: Runs the real CLI with the given modules made unimportable (as if their package were absent).
WITHOUT = "import sys\nfor m in {mods!r}: sys.modules[m] = None\nsys.argv = {argv!r}\nfrom digitops.cli import main\nmain()\n"


def _cli_without(modules: list[str], *argv: str) -> subprocess.CompletedProcess[str]:
    code = WITHOUT.format(mods=modules, argv=["digitops", *argv])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("absent", [["voila"], ["anywidget"], ["voila", "ipywidgets"]])
def test_dashboard_without_its_extra_names_it_in_one_line(absent: list[str]) -> None:
    out = _cli_without(absent, "dashboard", "--dry-run")
    assert out.returncode == 2  # a configuration error, like every DigitopsError of its kind
    assert out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line == (
        f"Error: digitops dashboard needs the 'dashboard' extra ({', '.join(absent)} not installed):"
        " pip install 'digitops[dashboard]'"
    )


def test_dashboard_with_its_extra_builds_the_voila_command() -> None:
    out = _cli_without([], "dashboard", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert " -m digitops.dashboard.voila_app " in out.stdout  # the Voila subclass with the kernel cap


def test_fetch_only_needs_the_core_package_only(tmp_path, monkeypatch) -> None:
    # An image build may fetch the model before the dashboard extra is there: no extra check,
    # the registry's own answer (nothing in production here) is what the user sees.
    monkeypatch.setenv("DIGITOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DIGITOPS_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    monkeypatch.delenv("DIGITOPS_MODEL_VERSION", raising=False)
    out = _cli_without(["voila", "ipywidgets", "anywidget"], "dashboard", "--fetch-only")
    assert out.returncode == 2  # RegistryError: could not do what was asked
    assert out.stderr.startswith("Error: No production version of the model")
    assert "extra" not in out.stderr and "Traceback" not in out.stderr


def test_missing_lists_only_what_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    assert extras.missing("lab") == []
    monkeypatch.setitem(sys.modules, "jupyterlab", None)
    assert extras.missing("lab") == ["jupyterlab"]
    with pytest.raises(extras.MissingExtra, match=r"^make lab needs the 'lab' extra \(jupyterlab not installed\)"):
        extras.require("lab", "make lab")
