"""ci/image.py, ci/deps-tag.sh and ci/install.sh: which image the model jobs get, and what they install.

The registry is a strict loopback fake of the registry HTTP API v2 with GitLab's token flow:
a manifest HEAD without a bearer token gets 401 and a challenge; the token service wants the
job's Basic credentials and the right scope.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD = "gitlab-ci-token", "job-token-s3cret"
PATH = "group/digitops/ci"

_spec = importlib.util.spec_from_file_location("ci_image", ROOT / "ci" / "image.py")
image = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image)


class FakeRegistry:
    """Holds ``tags`` of ``group/digitops/ci``; ``fault`` = None | "5xx" | "slow" | "basic"."""

    def __init__(self) -> None:
        self.tags: set[str] = set()
        self.fault: str | None = None
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.token = "bearer-" + os.urandom(8).hex()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:  # noqa: N802
                outer.requests.append(("HEAD", self.path, dict(self.headers)))
                if outer.fault == "slow":
                    time.sleep(3)
                if outer.fault == "5xx":
                    return self._send(503)
                if outer.fault == "basic":
                    return self._send(401, headers={"WWW-Authenticate": 'Basic realm="registry"'})
                prefix = f"/v2/{PATH}/manifests/"
                if not self.path.startswith(prefix):
                    return self._send(404)
                if self.headers.get("Authorization") != f"Bearer {outer.token}":
                    challenge = (f'Bearer realm="{outer.url}/jwt/auth",service="container_registry",'
                                 f'scope="repository:{PATH}:pull"')
                    return self._send(401, headers={"WWW-Authenticate": challenge})
                if "manifest" not in self.headers.get("Accept", ""):
                    return self._send(406)
                tag = urllib.parse.unquote(self.path[len(prefix):])
                return self._send(200 if tag in outer.tags else 404,
                                  headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})

            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append(("GET", self.path, dict(self.headers)))
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if url.path != "/jwt/auth" or query != {"service": "container_registry",
                                                         "scope": f"repository:{PATH}:pull"}:
                    return self._send(400)
                if self.headers.get("Authorization") != basic:
                    return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
                self._send(200, json.dumps({"token": outer.token}).encode(), {"Content-Type": "application/json"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.host = f"127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> "FakeRegistry":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def registry() -> Iterator[FakeRegistry]:
    with FakeRegistry() as server:
        yield server


def _env(registry: FakeRegistry, **extra: str) -> dict[str, str]:
    return {"CI_REGISTRY_IMAGE": f"{registry.host}/group/digitops", "CI_REGISTRY_USER": USER,
            "CI_REGISTRY_PASSWORD": PASSWORD, "DIGITOPS_REGISTRY_SCHEME": "http", **extra}


def test_the_tag_is_a_hash_of_the_dependency_files(tmp_path: Path) -> None:
    files = (ROOT / "pyproject.toml").read_bytes() + (ROOT / "ci" / "Dockerfile").read_bytes()
    assert image.deps_tag() == "deps-" + hashlib.sha256(files).hexdigest()[:16]
    # Another dependency: another tag (a copy of the repository, the script as the jobs run it).
    (tmp_path / "ci").mkdir()
    shutil.copy(ROOT / "ci" / "deps-tag.sh", tmp_path / "ci")
    shutil.copy(ROOT / "ci" / "Dockerfile", tmp_path / "ci")
    pyproject = (ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(pyproject)
    same = subprocess.run(["sh", "ci/deps-tag.sh"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert same.stdout.strip() == image.deps_tag()
    (tmp_path / "pyproject.toml").write_text(pyproject.replace('"numpy>=1.26",', '"numpy>=1.26",\n    "rich>=13",'))
    other = subprocess.run(["sh", "ci/deps-tag.sh"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert other.stdout.strip() != same.stdout.strip()


def test_the_ci_image_when_the_registry_holds_the_tag(registry: FakeRegistry, tmp_path: Path) -> None:
    registry.tags.add(image.deps_tag())
    chosen, reason = image.choose(_env(registry))
    assert chosen == f"{registry.host}/group/digitops/ci:{image.deps_tag()}" and reason == "dependencies baked in"
    # It asked with the token the token service gave for the job's credentials.
    assert [(m, p.split("?")[0]) for m, p, _ in registry.requests] == [
        ("HEAD", f"/v2/{PATH}/manifests/{image.deps_tag()}"), ("GET", "/jwt/auth"),
        ("HEAD", f"/v2/{PATH}/manifests/{image.deps_tag()}")]


def test_the_fallback_when_the_tag_is_not_built(registry: FakeRegistry) -> None:
    registry.tags.add("deps-0000000000000000")  # the image of older dependencies
    chosen, reason = image.choose(_env(registry, DIGITOPS_FALLBACK_IMAGE="python:3.11-slim"))
    assert chosen == "python:3.11-slim" and "is not built yet" in reason


@pytest.mark.parametrize("fault, why", [
    ("5xx", "HTTP 503"),
    ("basic", "asks for Basic auth"),
    ("slow", "timed out"),
    ("bad-password", "HTTP Error 401"),
])
def test_any_doubt_falls_back_to_installing(registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch,
                                            fault: str, why: str) -> None:
    registry.tags.add(image.deps_tag())
    monkeypatch.setattr(image, "TIMEOUT", 0.5)
    env = _env(registry)
    if fault == "bad-password":
        env["CI_REGISTRY_PASSWORD"] = "expired"
    else:
        registry.fault = fault
    chosen, reason = image.choose(env)
    assert chosen == "python:3.11-slim"
    assert why in reason and "installing instead" in reason


def test_no_registry_and_the_dotenv_the_jobs_read(tmp_path: Path, registry: FakeRegistry,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert image.choose({}) == ("python:3.11-slim", "the project has no container registry (CI_REGISTRY_IMAGE is empty)")
    registry.tags.add(image.deps_tag())
    for key, value in _env(registry).items():
        monkeypatch.setenv(key, value)
    assert image.main(["--dotenv", str(tmp_path / "ci-image.env")]) == 0
    ref = f"{registry.host}/group/digitops/ci:{image.deps_tag()}"
    assert (tmp_path / "ci-image.env").read_text() == f"DIGITOPS_CI_IMAGE={ref}\n"
    out = capsys.readouterr().out
    assert out == f"model jobs' image: {ref} (dependencies baked in)\n" and PASSWORD not in out


# ----------------------------------------------------------------- ci/install.sh


FAKE_PYTHON = """#!{python}
import os, subprocess, sys
args = sys.argv[1:]
line = " ".join(args)
with open(os.environ["FAKE_LOG"], "a") as log:
    print(line, file=log)
    if args[:1] == ["-"]:  # install.sh's inline script: really run it
        sys.exit(subprocess.run([{python!r}, *args]).returncode)
    if line == "-c import sys; print(sys.executable)":
        print("/job/venv/bin/python")
    elif line == "-m pip check":
        sys.exit(int(os.environ.get("FAKE_CHECK_RC", "0")))
    elif line.startswith("-m pip install --quiet uv=="):
        sys.exit(int(os.environ.get("FAKE_UV_INSTALL_RC", "0")))
    elif line.startswith("-m uv "):
        print("index=" + os.environ.get("UV_DEFAULT_INDEX", "") + " extra=" + os.environ.get("UV_INDEX", ""), file=log)
        if "-r" in args:
            print("requirements: " + open(args[args.index("-r") + 1]).read().replace(chr(10), " | "), file=log)
        sys.exit(int(os.environ.get("FAKE_UV_RC", "0")))
"""


@pytest.fixture()
def fake_python(tmp_path: Path) -> Path:
    """A ``python`` that records its arguments (and the uv index settings it was given).

    ``pip check`` exits $FAKE_CHECK_RC, installing uv $FAKE_UV_INSTALL_RC, ``uv pip`` $FAKE_UV_RC;
    install.sh's inline script (``python -``) really runs.
    """
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "python"
    script.write_text(FAKE_PYTHON.format(python=sys.executable))
    script.chmod(0o755)
    return bin_dir


def _install(fake_python: Path, rc: int = 0, **env: str) -> tuple[list[str], str]:
    log = fake_python.parent / "calls.log"
    log.unlink(missing_ok=True)
    run_env = {"PATH": f"{fake_python}:/usr/bin:/bin", "FAKE_LOG": str(log), **env}
    out = subprocess.run(["sh", str(ROOT / "ci" / "install.sh")], env=run_env, capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == rc, out.stderr
    return (log.read_text().splitlines() if log.exists() else []), out.stdout + (out.stderr if rc else "")


UV = ["-c import sys; print(sys.executable)", "-m pip install --quiet uv==0.13.9"]


def test_install_everything_in_the_plain_image_with_uv(fake_python: Path) -> None:
    assert _install(fake_python) == (
        [*UV, "-m uv pip install --quiet --python /job/venv/bin/python -e .", "index= extra="], "")
    assert _install(fake_python, DIGITOPS_PIP_SPEC=".[dev]")[0][2] == \
        "-m uv pip install --quiet --python /job/venv/bin/python -e .[dev]"
    assert _install(fake_python, DIGITOPS_SKIP_INSTALL="true") == ([], "")


def test_pip_when_asked_for(fake_python: Path) -> None:
    assert _install(fake_python, DIGITOPS_INSTALLER="pip") == (["-m pip install --quiet -e ."], "")


def test_a_runner_mirror_set_for_pip_applies_to_uv(fake_python: Path) -> None:
    calls, _ = _install(fake_python, PIP_INDEX_URL="https://mirror.example/simple",
                        PIP_EXTRA_INDEX_URL="https://extra.example/simple")
    assert calls[-1] == "index=https://mirror.example/simple extra=https://extra.example/simple"
    # uv's own settings win.
    calls, _ = _install(fake_python, PIP_INDEX_URL="https://mirror.example/simple", UV_DEFAULT_INDEX="https://uv.example")
    assert calls[-1] == "index=https://uv.example extra="


def test_pip_installs_when_uv_cannot_be_had_or_fails(fake_python: Path) -> None:
    calls, out = _install(fake_python, FAKE_UV_INSTALL_RC="1")
    assert calls == [*UV, "-m pip install --quiet -e ."]
    assert out == "ci/install.sh: uv could not be installed; installing with pip\n"
    calls, out = _install(fake_python, FAKE_UV_RC="2")
    assert calls[-1] == "-m pip install --quiet -e ." and calls[2].startswith("-m uv pip install")
    assert out == "ci/install.sh: uv failed (exit 2); installing with pip\n"


def test_the_ci_image_installs_the_package_only(fake_python: Path) -> None:
    calls, out = _install(fake_python, DIGITOPS_CI_DEPS="baked")
    assert calls == ["-m pip install --quiet --no-deps --no-build-isolation -e .", "-m pip check"] and out == ""
    # The tests job wants the dev tools, which the image does not have.
    assert _install(fake_python, DIGITOPS_CI_DEPS="baked", DIGITOPS_PIP_SPEC=".[dev]", DIGITOPS_INSTALLER="pip")[0] == [
        "-m pip install --quiet -e .[dev]"]


def test_a_stale_ci_image_installs_what_is_missing(fake_python: Path) -> None:
    calls, out = _install(fake_python, DIGITOPS_CI_DEPS="baked", FAKE_CHECK_RC="1", DIGITOPS_INSTALLER="pip")
    assert calls == ["-m pip install --quiet --no-deps --no-build-isolation -e .", "-m pip check",
                     "-m pip install --quiet -e ."]
    assert "do not satisfy pyproject.toml" in out


def test_install_without_leaves_out_what_a_job_never_imports(fake_python: Path) -> None:
    calls, out = _install(fake_python, DIGITOPS_INSTALL_WITHOUT="tensorflow-cpu tensorflow Keras")
    assert calls[2] == "- tensorflow-cpu tensorflow Keras"
    assert re.fullmatch(r"-m uv pip install --quiet --python /job/venv/bin/python -r \S+/digitops-requirements-\w+",
                        calls[3])
    required = calls[5].removeprefix("requirements: ").split(" | ")
    assert not [r for r in required if r.lower().startswith(("tensorflow", "keras"))]
    assert "papermill>=2.6" in required and any(r.startswith("comet_ml") for r in required)
    assert calls[6] == "-m uv pip install --quiet --python /job/venv/bin/python --no-deps -e ."
    assert out == "ci/install.sh: installed without tensorflow-cpu tensorflow Keras\n"
    assert not Path(calls[3].split(" -r ")[1]).exists()  # removed once installed
    # A name pyproject.toml does not list is a typo: refused before anything is installed.
    calls, out = _install(fake_python, rc=1, DIGITOPS_INSTALL_WITHOUT="tensorflow-gpu")
    assert "DIGITOPS_INSTALL_WITHOUT names what pyproject.toml does not list: tensorflow-gpu" in out
    assert not [c for c in calls if c.startswith("-m uv pip")]


def _report_job_left_out() -> list[str]:
    job = yaml.safe_load((ROOT / "ci" / "report.yml").read_text())["report"]
    return str(job["variables"]["DIGITOPS_INSTALL_WITHOUT"]).split()


def test_the_report_jobs_commands_run_without_what_it_leaves_out(workdir: Path) -> None:
    """report, publish and sync with every module of the left-out distributions unimportable."""
    import importlib.metadata as md
    import sys

    from fake_gitlab import FakeGitLab
    from store_helpers import add_run, keras_model_file
    from test_gitlab import ci_env

    from digitops.registry.sqlite import SqliteRegistry
    from digitops.tracking.sqlite import SqliteTracker

    left_out = {n.lower().replace("_", "-") for n in _report_job_left_out()}
    assert {"tensorflow-cpu", "keras"} <= left_out
    blocked = sorted(mod for mod, dists in md.packages_distributions().items()
                     if {d.lower().replace("_", "-") for d in dists} & left_out and mod.isidentifier())
    assert {"tensorflow", "keras", "papermill"} <= set(blocked)
    tracker, reg = SqliteTracker(), SqliteRegistry()
    add_run(tracker, "prod", {"test_accuracy": 0.96, "test_loss": 0.15})
    reg.register("mnist-digits", keras_model_file(workdir / "m" / "model.keras"), "prod",
                 metrics={"test_accuracy": 0.96}, status="production")
    add_run(tracker, "cand", {"test_accuracy": 0.97, "test_loss": 0.1})
    stub = (f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\n"
            "from digitops.cli import main\nsys.argv = ['digitops'] + sys.argv[1:]\nmain()\n")
    with FakeGitLab() as fake:
        env = {**ci_env(fake, RUN_ID="cand"), "DIGITOPS_HOME": str(workdir / ".digitops"),
               "DIGITOPS_RUNS": str(workdir / "runs")}
        for args in (["--version"], ["report", "cand", "--out", "report", "--exit-code"],
                     ["publish", "mr", "--report-dir", "report"]):
            out = subprocess.run([sys.executable, "-c", stub, *args], cwd=workdir, env=env, capture_output=True,
                                 text=True, timeout=120)
            assert out.returncode == 0, (args, out.stdout, out.stderr)
        assert "97.00 %" in fake.mr_notes()[0]["body"]
        # sync (ci/send-kept.sh) with a server backend and nothing kept: no import of what was left out.
        out = subprocess.run([sys.executable, "-c", stub, "sync"], cwd=workdir, capture_output=True, text=True,
                             env={**env, "DIGITOPS_BACKEND": "mlflow", "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
                             timeout=120)
        assert "ModuleNotFoundError" not in out.stderr and "import" not in out.stderr.lower(), out.stderr


def test_uv_installs_into_the_jobs_own_interpreter(tmp_path: Path) -> None:
    """For real: uv from the package index, a small package installed into the job's venv, not elsewhere."""
    project = tmp_path / "project"
    (project / "jobpkg").mkdir(parents=True)
    (project / "jobpkg" / "__init__.py").write_text("VALUE = 42\n")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "jobpkg"\nversion = "1.0"\n[tool.setuptools]\npackages = ["jobpkg"]\n')
    venv = tmp_path / "venv"
    subprocess.run([getattr(__import__("sys"), "_base_executable"), "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGITOPS_", "VIRTUAL_ENV", "UV_"))}
    env.update(PATH=f"{venv / 'bin'}:/usr/bin:/bin", UV_CACHE_DIR=str(tmp_path / "uv-cache"))
    out = subprocess.run(["sh", str(ROOT / "ci" / "install.sh")], cwd=project, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr
    check = subprocess.run([str(venv / "bin" / "python"), "-c", "import jobpkg, uv; print(jobpkg.VALUE)"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert check.stdout == "42\n", check.stderr
