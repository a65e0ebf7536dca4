"""The Voila digit dashboard: model loading, the app's widgets, the CLI, deploy files, and the page in Chromium."""

from __future__ import annotations

import io
import json
import re
import shlex
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image, ImageDraw

import browser
import ws_visitor
from digitops.dashboard import loader, server
from digitops.registry.base import RegistryError, sha256_file
from digitops.registry.sqlite import SqliteRegistry

NAME = "mnist-digits"
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An isolated state folder (embedded registry, model cache) with no Comet key."""
    monkeypatch.setenv("DIGITOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DIGITOPS_RUNS", str(tmp_path / "runs"))
    for var in ("COMET_API_KEY", "DIGITOPS_MODEL_VERSION", "DIGITOPS_MODEL_CACHE", "DIGITOPS_MODEL_NAME"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Two different untrained .keras files (loading needs a real model, accuracy does not)."""
    from digitops import model

    folder = tmp_path_factory.mktemp("tiny")
    paths = []
    for seed in (1, 2):
        paths.append(model.save(model.build("mlp", seed=seed), folder / f"m{seed}.keras"))
    return paths


class CountingRegistry(SqliteRegistry):
    """The real embedded registry, counting downloads."""

    downloads = 0

    def download(self, *args, **kwargs):
        type(self).downloads += 1
        return super().download(*args, **kwargs)


def drawn_png(strokes, size: int = 280, width: int = 28) -> bytes:
    im = Image.new("RGB", (size, size), "black")
    d = ImageDraw.Draw(im)
    for pts in strokes:
        pts = [(x * size, y * size) for x, y in pts]
        d.line(pts, fill="white", width=width)
        for x, y in pts:
            d.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill="white")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- loader


def test_no_model_explains_how_to_register_one(home):
    with pytest.raises(loader.NoModelError) as err:
        loader.resolve()
    text = str(err.value)
    assert "No production version" in text and NAME in text
    assert "digitops pipeline" in text and "DIGITOPS_MODEL_VERSION" in text


def test_staging_only_is_not_served(home, tiny_models):
    SqliteRegistry().register(NAME, tiny_models[0], "run-a", status="staging")
    with pytest.raises(loader.NoModelError, match="No production version"):
        loader.resolve()


def test_production_is_fetched_once_and_cached_by_version(home, tiny_models):
    reg = CountingRegistry()
    CountingRegistry.downloads = 0
    mv = reg.register(NAME, tiny_models[0], "run-a", metrics={"test_accuracy": 0.9}, status="production")
    got = loader.resolve(reg)
    assert (got.version, got.sha256) == (mv.version, mv.sha256)
    path = loader.fetch(got, reg)
    assert path == home / "model-cache" / NAME / mv.version / "model.keras"
    assert sha256_file(path) == mv.sha256
    assert loader.fetch(got, reg) == path
    assert CountingRegistry.downloads == 1
    record = json.loads((path.parent / "version.json").read_text())
    assert record["sha256"] == mv.sha256 and record["run_id"] == "run-a"


def test_cache_location_follows_environment(home, tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITOPS_MODEL_CACHE", str(tmp_path / "elsewhere"))
    mv = SqliteRegistry().register(NAME, tiny_models[0], "run-a", status="production")
    assert loader.fetch(loader.resolve()) == tmp_path / "elsewhere" / NAME / mv.version / "model.keras"


def test_checksum_mismatch_in_cache_is_refused(home, tiny_models):
    reg = SqliteRegistry()
    mv = reg.register(NAME, tiny_models[0], "run-a", status="production")
    path = loader.fetch(mv, reg)
    path.write_bytes(Path(tiny_models[1]).read_bytes())  # a different model under the same version
    with pytest.raises(loader.ChecksumError) as err:
        loader.fetch(mv, reg)
    assert "refusing to load" in str(err.value) and mv.version in str(err.value)
    assert "delete" in str(err.value)
    with pytest.raises(loader.ChecksumError):
        loader.load_file(mv, path)


def test_checksum_mismatch_in_download_leaves_nothing_cached(home, tiny_models):
    reg = SqliteRegistry()
    mv = reg.register(NAME, tiny_models[0], "run-a", status="production")
    from digitops.registry.base import ModelVersion

    forged = ModelVersion(**{**mv.to_dict(), "sha256": "0" * 64})
    with pytest.raises(loader.ChecksumError):
        loader.fetch(forged, reg)
    assert not loader.cache_path(NAME, mv.version).exists()


def test_pinned_version_is_served_instead_of_production(home, tiny_models, monkeypatch):
    reg = SqliteRegistry()
    v1 = reg.register(NAME, tiny_models[0], "run-a", status="production")
    v2 = reg.register(NAME, tiny_models[1], "run-b", status="staging")
    assert loader.resolve(reg).version == v1.version
    monkeypatch.setenv("DIGITOPS_MODEL_VERSION", v2.version)
    got = loader.resolve(reg)
    assert (got.version, got.run_id, got.sha256) == (v2.version, "run-b", v2.sha256)
    loaded = loader.load()
    assert loaded.version.version == v2.version
    assert sha256_file(loaded.path) == v2.sha256
    proba = loader.predict(loaded, np.zeros((28, 28), np.uint8))
    assert proba.shape == (10,) and abs(float(proba.sum()) - 1.0) < 1e-4


def test_pinned_unknown_version_is_a_clear_error(home, tiny_models, monkeypatch):
    SqliteRegistry().register(NAME, tiny_models[0], "run-a", status="production")
    monkeypatch.setenv("DIGITOPS_MODEL_VERSION", "9.9.9")
    with pytest.raises(loader.NoModelError, match=r"DIGITOPS_MODEL_VERSION=9\.9\.9.*no version 9\.9\.9"):
        loader.resolve()


def test_pinned_cached_version_needs_no_registry(home, tiny_models, tmp_path, monkeypatch):
    """A baked image: the cache holds the file and its record; the registry is not there."""
    reg = SqliteRegistry()
    mv = reg.register(NAME, tiny_models[0], "run-a", status="production")
    cache = tmp_path / "baked"
    monkeypatch.setenv("DIGITOPS_MODEL_CACHE", str(cache))
    loader.fetch(mv, reg)
    monkeypatch.setenv("DIGITOPS_HOME", str(tmp_path / "empty-home"))  # no registry at all
    monkeypatch.setenv("DIGITOPS_MODEL_VERSION", mv.version)
    got = loader.resolve()
    assert (got.version, got.sha256) == (mv.version, mv.sha256)
    assert loader.fetch(got) == cache / NAME / mv.version / "model.keras"


def test_model_loaded_once_per_process(home, tiny_models):
    SqliteRegistry().register(NAME, tiny_models[0], "run-a", status="production")
    first, second = loader.load(), loader.load()
    assert first is second and first.model is second.model


# ----------------------------------------------------------------------------- app (no browser)


@pytest.fixture
def digit_app(home, tiny_models):
    from digitops.dashboard.app import DigitApp

    mv = SqliteRegistry().register(NAME, tiny_models[0], "run-x", metrics={"test_accuracy": 0.987}, status="production")
    return DigitApp(mv, loader.load())


def test_app_predicts_the_drawn_image(digit_app):
    digit_app.canvas._on_frontend_msg(None, {"type": "image", "strokes": 1}, [memoryview(drawn_png([[(0.5, 0.2), (0.5, 0.8)]]))])
    digit = digit_app.predict()
    assert digit is not None and 0 <= digit <= 9
    assert 'data-state="prediction"' in digit_app.result.value
    assert f'data-digit="{digit}"' in digit_app.result.value
    probs = [float(p) for p in re.findall(r'data-p="([0-9.]+)"', digit_app.bars.value)]
    assert len(probs) == 10 and abs(sum(probs) - 1) < 1e-3 and int(np.argmax(probs)) == digit
    seen = np.asarray(Image.open(io.BytesIO(_seen_png(digit_app.seen.value))))
    assert seen.shape == (28, 28) and seen.max() == 255


def _seen_png(value: str) -> bytes:
    import base64

    match = re.search(r'<img class="dg-seen-img"[^>]* src="data:image/png;base64,([A-Za-z0-9+/=]+)"', value)
    assert match, value
    return base64.b64decode(match.group(1))


def _widget_buffers(widget) -> list:
    """The binary buffers a widget's state would send to the browser."""
    from ipywidgets.widgets.widget import _remove_buffers

    _state, _paths, buffers = _remove_buffers(widget.get_state())
    return buffers


def test_app_sends_no_binary_buffers_to_the_browser(digit_app):
    """Voila 0.5 grows without bound on a binary message to a legacy-protocol client: send none."""
    digit_app.canvas._on_frontend_msg(None, {"type": "image"}, [memoryview(drawn_png([[(0.5, 0.2), (0.5, 0.8)]]))])
    assert digit_app.predict() is not None
    widgets = [digit_app.seen, digit_app.result, digit_app.bars, digit_app.card, digit_app.canvas]
    assert all(_widget_buffers(wd) == [] for wd in widgets)
    assert len(_seen_png(digit_app.seen.value)) > 60


@pytest.mark.parametrize(
    "png, message",
    [
        (lambda: _png(Image.new("RGBA", (10000, 10000))), "10000x10000 pixels; at most 1024x1024"),
        (lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * (3 * 2**20), "at most 2 MB"),
        (lambda: b"not an image at all", "could not decode"),
    ],
)
def test_app_refuses_huge_or_broken_images_with_a_message(digit_app, png, message):
    digit_app.canvas._on_frontend_msg(None, {"type": "image"}, [memoryview(png())])
    assert digit_app.predict() is None
    assert 'data-state="invalid"' in digit_app.result.value and message in digit_app.result.value
    assert "Traceback" not in digit_app.result.value
    # The next drawing still works.
    digit_app.canvas._on_frontend_msg(None, {"type": "image"}, [memoryview(drawn_png([[(0.5, 0.2), (0.5, 0.8)]]))])
    assert digit_app.predict() is not None


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_app_empty_canvas_shows_message_not_prediction(digit_app):
    assert digit_app.predict() is None
    assert 'data-state="empty"' in digit_app.result.value and "canvas is empty" in digit_app.result.value
    digit_app.canvas._on_frontend_msg(None, {"type": "image"}, [memoryview(drawn_png([]))])
    assert digit_app.predict() is None and 'data-state="empty"' in digit_app.result.value


def test_app_clear_and_live_mode(digit_app):
    png = drawn_png([[(0.3, 0.2), (0.7, 0.2), (0.45, 0.8)]])
    digit_app.live.value = True
    seq = digit_app.seq
    digit_app.canvas._on_frontend_msg(None, {"type": "image", "strokes": 1}, [memoryview(png)])
    assert digit_app.seq == seq + 1 and 'data-state="prediction"' in digit_app.result.value
    digit_app.clear()
    assert digit_app.canvas.png is None and 'data-state="idle"' in digit_app.result.value
    assert 'data-p="0.000000"' in digit_app.bars.value


def test_app_loads_the_model_only_when_the_canvas_is_shown_or_predict_is_pressed(home, tiny_models):
    from concurrent.futures import Future

    from digitops.dashboard.app import DigitApp

    mv = SqliteRegistry().register(NAME, tiny_models[0], "run-x", status="production")
    starts = []

    def start():
        starts.append(1)
        future = Future()
        future.set_result(loader.load())
        return future

    app = DigitApp(mv, start)
    assert starts == []
    app.canvas._on_frontend_msg(None, {"type": "ready"}, [])
    app.canvas._on_frontend_msg(None, {"type": "ready"}, [])  # a second view of the same page
    assert starts == [1]
    app.canvas._on_frontend_msg(None, {"type": "image"}, [memoryview(drawn_png([[(0.5, 0.2), (0.5, 0.8)]]))])
    assert app.predict() is not None and starts == [1]
    lazy = DigitApp(mv, start)
    lazy.canvas._on_frontend_msg(None, {"type": "image"}, [memoryview(drawn_png([[(0.5, 0.2), (0.5, 0.8)]]))])
    assert lazy.predict() is not None and starts == [1, 1]


def test_model_card(digit_app):
    card = digit_app.card.value
    assert 'data-version="0.1.0"' in card and "mnist-digits" in card and "production" in card
    assert "98.70 %" in card and "run-x" in card and "UTC" in card


def test_model_card_links_comet_or_local_report(home, tmp_path, monkeypatch):
    from digitops.dashboard.app import FILES_ENV, model_card_html
    from digitops.registry.base import ModelVersion

    mv = ModelVersion(NAME, "1.2.0", "run-9", "a" * 64, "production", url="https://www.comet.com/ws/digitops/abc")
    assert 'href="https://www.comet.com/ws/digitops/abc"' in model_card_html(mv)
    local = ModelVersion(NAME, "1.2.0", "run-9", "a" * 64, "production")
    assert "href" not in model_card_html(local)
    (tmp_path / "runs" / "run-9").mkdir(parents=True)
    (tmp_path / "runs" / "run-9" / "evaluate.html").write_text("<html>report</html>")
    monkeypatch.setenv(FILES_ENV, "runs")
    assert 'href="voila/files/runs/run-9/evaluate.html"' in model_card_html(local)


def test_build_without_model_returns_a_notice(home):
    from digitops.dashboard.app import build

    page = build()
    assert 'data-kind="no-model"' in page.value and "digitops pipeline" in page.value
    assert "Traceback" not in page.value


def test_build_with_tampered_cache_returns_a_notice(home, tiny_models):
    from digitops.dashboard.app import build

    reg = SqliteRegistry()
    mv = reg.register(NAME, tiny_models[0], "run-a", status="production")
    loader.fetch(mv, reg).write_bytes(b"tampered")
    page = build()
    assert 'data-kind="checksum"' in page.value and "refusing to load" in page.value


def test_build_with_broken_registry_hides_details_from_visitors(home, capsys):
    from digitops.dashboard.app import build

    home.mkdir(parents=True)
    (home / "registry.db").write_bytes(b"this is not a database" * 100)
    page = build()
    assert 'data-kind="load-error"' in page.value and "server log" in page.value
    assert "Traceback" not in page.value and str(home) not in page.value


# ----------------------------------------------------------------------------- model process


@pytest.fixture
def model_server(home, tiny_models, tmp_path):
    """The model process's server in a thread, on a socket in tmp_path, with one cached production version."""
    import threading

    from digitops.dashboard import modelserver

    reg = SqliteRegistry()
    mv = reg.register(NAME, tiny_models[0], "run-m", status="production")
    loader.fetch(mv, reg)
    path = str(tmp_path / "m.sock")
    srv = modelserver.ModelServer(path)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield path, mv
    srv.shutdown()
    srv.server_close()


def test_model_process_predicts_like_the_kernel_did(model_server, monkeypatch):
    from digitops.dashboard import modelserver

    path, mv = model_server
    image = np.zeros((28, 28), np.uint8)
    image[6:22, 12:16] = 255
    remote = modelserver.RemoteModel(path, mv)
    expected = loader.predict(loader.load_file(mv, loader.cache_path(NAME, mv.version)), image)
    assert np.allclose(loader.predict(remote, image), expected, atol=1e-5)
    monkeypatch.setenv(modelserver.SOCKET_ENV, path)
    assert isinstance(modelserver.client_from_env(mv), modelserver.RemoteModel)


def test_model_process_answers_many_kernels_at_once(model_server):
    """Fifty visitors pressing Predict together: none may be refused (the default backlog of 5 refused some)."""
    from concurrent.futures import ThreadPoolExecutor

    from digitops.dashboard import modelserver

    path, mv = model_server
    remote = modelserver.RemoteModel(path, mv)
    remote.predict(np.zeros((28, 28), np.uint8))  # loaded once
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda _i: remote.predict(np.full((28, 28), 7, np.uint8)).shape, range(256)))
    assert results == [(10,)] * 256


def test_model_process_serves_only_cached_registered_versions(model_server, tiny_models):
    from digitops.dashboard import modelserver
    from digitops.registry.base import ModelVersion

    path, mv = model_server
    forged = ModelVersion(**{**mv.to_dict(), "sha256": sha256_file(tiny_models[1])})
    with pytest.raises(modelserver.ModelServerError, match="not in the model cache"):
        modelserver.RemoteModel(path, forged).predict(np.zeros((28, 28), np.uint8))
    loader.cache_path(NAME, mv.version).write_bytes(Path(tiny_models[1]).read_bytes())  # swapped on disk
    loader._LOADED.clear()
    with pytest.raises(modelserver.ModelServerError, match="ChecksumError"):
        modelserver.RemoteModel(path, mv).predict(np.zeros((28, 28), np.uint8))
    with pytest.raises(modelserver.ModelServerError, match="over the"):
        modelserver.RemoteModel(path, mv).request({"op": "ping", "junk": "x" * (modelserver.MAX_REQUEST + 1)})


def test_model_process_gone_is_an_error_not_a_hang(tmp_path):
    from digitops.dashboard import modelserver

    remote = modelserver.RemoteModel(str(tmp_path / "nobody.sock"), None)
    with pytest.raises(modelserver.ModelServerError, match="model process"):
        remote.request({"op": "ping"})


# ----------------------------------------------------------------------------- CLI


def test_cli_dry_run_binds_loopback_and_hides_tracebacks(home):
    from digitops.cli import cli

    res = CliRunner().invoke(cli, ["dashboard", "--dry-run", "--port", "9123"])
    assert res.exit_code == 0, res.output
    args = shlex.split(res.output.strip())
    assert args[1:3] == ["-m", "digitops.dashboard.voila_app"] and args[3].endswith("dashboards/digits.ipynb")
    for flag in (
        "--port=9123",
        "--Voila.ip=127.0.0.1",
        "--show_tracebacks=False",
        "--MappingKernelManager.cull_idle_timeout=60",
        "--MappingKernelManager.cull_connected=False",
        "--DigitopsVoila.max_kernels=60",
        "--no-browser",
    ):
        assert flag in args
    assert "--preheat_kernel=True" in args  # the default: a visitor's page appears sooner
    res = CliRunner().invoke(cli, ["dashboard", "--dry-run", "--no-preheat", "--host", "0.0.0.0", "--open"])
    args = shlex.split(res.output.strip())
    assert "--preheat_kernel=True" not in args and "--Voila.ip=0.0.0.0" in args and "--no-browser" not in args


def test_cli_fetch_only(home, tiny_models):
    from digitops.cli import cli

    res = CliRunner().invoke(cli, ["dashboard", "--fetch-only"])
    assert res.exit_code == 2 and "No production version" in res.output and "Traceback" not in res.output
    mv = SqliteRegistry().register(NAME, tiny_models[0], "run-a", status="production")
    res = CliRunner().invoke(cli, ["dashboard", "--fetch-only"])
    assert res.exit_code == 0, res.output
    assert f"cached {NAME} {mv.version}" in res.output
    assert loader.cache_path(NAME, mv.version).is_file()


def test_voila_root_must_contain_the_notebook(tmp_path):
    nb = tmp_path / "project" / "dashboards" / "digits.ipynb"
    nb.parent.mkdir(parents=True)
    nb.write_text("{}")
    args = server.voila_command(nb, root_dir=tmp_path / "project")
    assert f"--Voila.root_dir={tmp_path / 'project'}" in args
    args = server.voila_command(nb, root_dir=tmp_path / "elsewhere")
    assert f"--Voila.root_dir={nb.parent}" in args


def test_server_env_defaults_to_the_project_roots_store(tmp_path, monkeypatch):
    # `digitops dashboard` started deeper in the checkout serves the store the CLI uses (issue 12's one store).
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "digitops"\n')
    deeper = tmp_path / "dashboards"
    deeper.mkdir()
    monkeypatch.chdir(deeper)
    for name in ("DIGITOPS_HOME", "DIGITOPS_RUNS"):
        monkeypatch.delenv(name, raising=False)
    env = server.server_env(tmp_path, {})
    assert env["DIGITOPS_HOME"] == str(tmp_path / ".digitops")
    assert env["DIGITOPS_RUNS"] == str(tmp_path / "runs")


def test_server_env_makes_state_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIGITOPS_HOME", ".state")
    monkeypatch.setenv("DIGITOPS_RUNS", "runs")
    env = server.server_env(tmp_path)
    assert env["DIGITOPS_HOME"] == str(tmp_path / ".state")
    assert env["DIGITOPS_RUNS"] == str(tmp_path / "runs")
    assert env["DIGITOPS_DASHBOARD_FILES"] == "runs"
    monkeypatch.setenv("DIGITOPS_RUNS", "/somewhere/else")
    assert "DIGITOPS_DASHBOARD_FILES" not in server.server_env(tmp_path)
    monkeypatch.setenv("DIGITOPS_FEEDBACK_DIR", "fb")  # kernels run elsewhere: field drawings still land here
    assert server.server_env(tmp_path)["DIGITOPS_FEEDBACK_DIR"] == str(tmp_path / "fb")


# ----------------------------------------------------------------------------- deploy files


def _manifests() -> list[dict]:
    docs = []
    for path in sorted((REPO / "deploy" / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_k8s_manifests_are_valid_against_the_kubernetes_schema():
    import kubernetes_validate

    docs = _manifests()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service"}
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    broken = json.loads(json.dumps(next(d for d in docs if d["kind"] == "Deployment")))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_k8s_deployment_is_replicated_probed_and_sticky():
    docs = {d["kind"]: d for d in _manifests()}
    dep, svc = docs["Deployment"], docs["Service"]
    assert dep["spec"]["replicas"] >= 2
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["http"] == 8866
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["sessionAffinity"] == "ClientIP"  # a page's websocket must reach its kernel
    kustomization = yaml.safe_load((REPO / "deploy" / "k8s" / "kustomization.yaml").read_text())
    assert all((REPO / "deploy" / "k8s" / r).is_file() for r in kustomization["resources"])


def test_k8s_memory_fits_a_full_replica_and_the_request_its_fixed_costs():
    """A replica at the kernel cap must fit its memory limit (or the pod is OOM-killed, every visitor with it)."""
    container = {d["kind"]: d for d in _manifests()}["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    mib = {"Mi": 1, "Gi": 1024}

    def size_mb(text: str) -> float:
        return float(text[:-2]) * mib[text[-2:]] * 1.048576

    full = server.MAX_KERNELS * server.SESSION_MB + server.MODEL_PROCESS_MB + server.SERVER_MB
    assert size_mb(container["resources"]["limits"]["memory"]) >= full
    assert size_mb(container["resources"]["requests"]["memory"]) >= server.MODEL_PROCESS_MB + server.SERVER_MB


def test_dockerfile_references_existing_files_and_serves_the_dashboard():
    text = (REPO / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:", text, re.M) and re.search(r"^ARG PYTHON_VERSION=", text, re.M)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (REPO / src).exists(), f"Dockerfile copies {src}, which does not exist"
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd[:2] == ["digitops", "dashboard"] and "--host" in cmd and "8866" in cmd
    assert (REPO / cmd[cmd.index("--notebook") + 1]).is_file()
    assert re.search(r"^EXPOSE 8866$", text, re.M) and re.search(r"^USER ", text, re.M)


def test_dashboard_notebook_is_thin_and_has_no_outputs():
    nb = json.loads((REPO / "dashboards" / "digits.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert sum(len("".join(c["source"]).splitlines()) for c in code) <= 5
    assert "digitops.dashboard" in "".join(code[0]["source"])


# ----------------------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory):
    """A state folder whose registry holds a small CNN, trained here, as production."""
    from digitops import data, model

    root = tmp_path_factory.mktemp("dash")
    mnist = data.load()
    x, y = data.subset(mnist.x_train, mnist.y_train, 10000, 0)
    net = model.build("cnn", learning_rate=2e-3, seed=0)
    model.fit(net, (x, y), epochs=2, batch_size=64, progress=False)
    acc = model.evaluate(net, mnist.x_test[:2000], mnist.y_test[:2000])["test_accuracy"]
    path = model.save(net, root / "model.keras")
    reg = SqliteRegistry(root / "home" / "registry.db", root / "home" / "models")
    mv = reg.register(NAME, path, "run-browser", metrics={"test_accuracy": acc}, status="production")
    (root / "runs" / "run-browser").mkdir(parents=True)
    (root / "runs" / "run-browser" / "evaluate.html").write_text("<html><body>evaluation report</body></html>")
    return root, mv


@pytest.fixture(scope="module")
def voila(trained_home):
    root, mv = trained_home
    env = browser.isolated_env(root, DIGITOPS_HOME=str(root / "home"), DIGITOPS_RUNS=str(root / "runs"))
    env = server.server_env(root, env)
    with browser.VoilaServer(root, env, preheat=True) as srv:
        yield srv, mv


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = browser.launch_chromium(pw)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(voila, chromium):
    srv, _mv = voila
    try:
        pg, seconds = browser.open_dashboard(chromium, srv.url)
    except Exception as exc:
        pytest.fail(f"the dashboard did not show its canvas: {exc}\n--- voila log ---\n{srv.log()}")
    pg.page_load_seconds = seconds  # type: ignore[attr-defined]
    yield pg
    pg.close()


@pytest.mark.slow
@pytest.mark.browser
def test_browser_recognises_drawn_digits(page):
    assert page.page_load_seconds < 60
    results = {}
    for digit in (0, 1, 7):
        browser.click_and_wait(page, "button.dg-clear")
        assert browser.canvas_ink(page) == 0
        blank_src = page.get_attribute("img.dg-seen-img", "src")
        browser.draw(page, browser.DIGIT_STROKES[digit])
        assert browser.canvas_ink(page) > 1000
        res = browser.click_and_wait(page, "button.dg-predict")
        results[digit] = res
        assert res["state"] == "prediction", res
        assert len(res["probabilities"]) == 10 and abs(sum(res["probabilities"]) - 1) < 1e-3
        assert int(np.argmax(res["probabilities"])) == res["digit"]
        # The 28x28 image the model saw replaced the blank placeholder.
        assert page.get_attribute("img.dg-seen-img", "src") != blank_src
        if digit == 7:
            browser.ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(browser.ARTIFACTS / "dashboard.png"), full_page=True)
    assert {d: r["digit"] for d, r in results.items()} == {0: 0, 1: 1, 7: 7}, results
    assert (browser.ARTIFACTS / "dashboard.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.browser
def test_browser_a_two_stroke_digit_is_sent_whole(page):
    browser.click_and_wait(page, "button.dg-clear")
    browser.draw(page, browser.DIGIT_STROKES[4])
    res = browser.click_and_wait(page, "button.dg-predict")
    assert res["state"] == "prediction" and page.get_attribute("canvas.digitops-canvas", "data-strokes") == "2"
    assert abs(sum(res["probabilities"]) - 1) < 1e-3


@pytest.mark.slow
@pytest.mark.browser
def test_browser_clear_resets_and_empty_canvas_shows_message(page):
    browser.draw(page, browser.DIGIT_STROKES[1])
    assert browser.click_and_wait(page, "button.dg-predict")["state"] == "prediction"
    res = browser.click_and_wait(page, "button.dg-clear")
    assert res["state"] == "idle" and browser.canvas_ink(page) == 0
    assert all(p == 0 for p in res["probabilities"])
    res = browser.click_and_wait(page, "button.dg-predict")
    assert res["state"] == "empty" and res["digit"] is None
    assert "canvas is empty" in res["text"]


@pytest.mark.slow
@pytest.mark.browser
def test_browser_predicts_on_pointer_up_when_asked(page):
    browser.click_and_wait(page, "button.dg-clear")
    page.check(".dg-live input[type=checkbox]")
    try:
        before = browser.result_seq(page)
        browser.draw(page, browser.DIGIT_STROKES[7])
        res = browser.wait_result(page, before)
        assert res["state"] == "prediction" and res["digit"] == 7
    finally:
        page.uncheck(".dg-live input[type=checkbox]")


@pytest.mark.slow
@pytest.mark.browser
def test_browser_model_card_shows_registered_version(page, voila):
    srv, mv = voila
    card = page.locator(".dg-card")
    assert card.get_attribute("data-version") == mv.version
    text = card.inner_text()
    assert mv.version in text and "production" in text and "run-browser" in text
    assert f"{100 * mv.metrics['test_accuracy']:.2f} %" in text
    href = page.get_attribute(".dg-card a", "href")
    assert href == "voila/files/runs/run-browser/evaluate.html"
    with urllib.request.urlopen(srv.url + href, timeout=10) as resp:
        assert b"evaluation report" in resp.read()
    # Only run reports are served, not the registry or the notebook.
    for forbidden in ("voila/files/home/registry.db", "voila/files/model.keras"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(srv.url + forbidden, timeout=10)
        assert err.value.code == 403


@pytest.mark.slow
@pytest.mark.browser
def test_browser_page_preloads_every_script_it_runs_and_asks_nothing_offsite(voila, chromium):
    """The first page: scripts preloaded from the head (so they download during kernel start), and no
    request leaves the server (Voila's template links Font Awesome from a CDN, which blocks offline)."""
    srv, _mv = voila
    pg = chromium.new_page()
    requested, failed = [], []
    pg.on("request", lambda r: requested.append((r.url, r.resource_type)))
    pg.on("requestfailed", lambda r: failed.append(r.url))
    pg.route("**/*", lambda route: route.continue_() if route.request.url.startswith(srv.url) else route.abort())
    try:
        html = pg.goto(srv.url).text()
        pg.wait_for_selector("canvas.digitops-canvas[data-ready='1']", timeout=60_000)
        preloaded = pg.eval_on_selector_all("link[rel=preload][as=script]", "ls => ls.map(l => l.href)")
    finally:
        pg.close()
    offsite = [url for url, _ in requested if not url.startswith((srv.url, "blob:", "data:"))]
    assert not offsite, f"requests outside the server: {offsite}"
    assert 'rel="preload"' in html, "the page preloads nothing"
    # Scripts the head names before the preloads are requested first anyway.
    head = html[: html.index('rel="preload"')]
    preloaded += [srv.url.rstrip("/") + src.replace("&amp;", "&") for src in re.findall(r'<script[^>]* src="([^"]+)"', head)]
    scripts = {url for url, kind in requested if kind == "script" and url.startswith(srv.url)}
    missing = sorted(scripts - set(preloaded))
    assert not missing, (
        "scripts the page ran without a preload; add them to "
        f"src/digitops/dashboard/templates/digitops/digitops_preload.j2: {missing}")
    assert not failed, f"failed requests: {failed}"
    unused = sorted(set(preloaded) - scripts)
    assert not unused, f"preloaded but never run (drop them from digitops_preload.j2): {unused}"
    assert not [u for u in scripts if "jupyterlab_pygments" in u], "an extension the page does not use was loaded"


@pytest.mark.slow
@pytest.mark.browser
def test_browser_without_a_model_the_page_explains_and_idle_kernels_are_culled(tmp_path, chromium):
    env = browser.isolated_env(tmp_path, DIGITOPS_HOME=str(tmp_path / "home"), DIGITOPS_RUNS=str(tmp_path / "runs"))
    env = server.server_env(tmp_path, env)
    with browser.VoilaServer(tmp_path, env, cull_idle_timeout=2, cull_interval=1) as srv:
        pg = chromium.new_page()
        pg.route("https://cdn.jsdelivr.net/**", lambda route: route.abort())
        try:
            pg.goto(srv.url)
            pg.wait_for_selector(".dg-notice[data-kind='no-model']", timeout=60_000)
            text = pg.inner_text("body")
            assert "No model to serve yet" in text and "digitops pipeline" in text
            assert "Traceback" not in text and "NoModelError" not in text
            assert pg.locator("canvas.digitops-canvas").count() == 0
        finally:
            pg.close()
        # A closed page leaves its kernel behind (Voila cannot shut it down); the culler must.
        culled = re.compile(r"Culling '\w+' kernel '[\w.-]+' \([0-9a-f-]+\) with 0 connections due to \d+ seconds of inactivity")
        deadline = time.monotonic() + 30
        while not culled.search(srv.log()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert culled.search(srv.log()), srv.log()


# ----------------------------------------------------------------------------- load and abuse (real websocket protocol)


def _ws(coro_fn, *args):
    """Run a visitor coroutine on its own loop (in a thread: a test may already be inside one)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro_fn(*args)).result()


def _served(root: Path, model_file: Path, run_id: str) -> dict:
    """Register ``model_file`` as production under ``root`` and return the dashboard server's environment."""
    SqliteRegistry(root / "home" / "registry.db", root / "home" / "models").register(
        NAME, model_file, run_id, status="production"
    )
    env = browser.isolated_env(root, DIGITOPS_HOME=str(root / "home"), DIGITOPS_RUNS=str(root / "runs"))
    return server.server_env(root, env)


@pytest.fixture(scope="module")
def ws_server(tmp_path_factory, tiny_models):
    """The dashboard server (model process, limits) serving an untrained model: behaviour, not accuracy."""
    root = tmp_path_factory.mktemp("ws")
    env = _served(root, tiny_models[0], "run-ws")
    with browser.VoilaServer(root, env, cull_idle_timeout=5, cull_interval=1, max_kernels=6) as srv:
        yield srv


def _model_process(srv) -> int:
    pids = [pid for pid, cmd in srv.processes().items() if "digitops.dashboard.modelserver" in cmd]
    assert len(pids) == 1, srv.processes()
    return pids[0]


async def _visit(url, pngs, subprotocol=ws_visitor.V1, linger=0.0):
    visitor = ws_visitor.Visitor(url)
    await visitor.load()
    await visitor.connect(subprotocol)
    try:
        results = [await visitor.predict(png) for png in pngs]
        await visitor.drain(linger)
        return results, visitor
    finally:
        visitor.close()


@pytest.mark.slow
def test_ws_kernels_are_thin_and_predict_through_the_model_process(ws_server):
    results, visitor = _ws(_visit, ws_server.url, [ws_visitor.drawn_png(1), ws_visitor.drawn_png(7)])
    assert [r["state"] for r, _ms in results] == ["prediction", "prediction"]
    kernels = [pid for pid, cmd in ws_server.processes().items() if "ipykernel" in cmd]
    assert kernels
    # No TensorFlow in a visitor's kernel (it was ~0.5 GB with it); the model process holds it once.
    for pid in kernels:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "tensorflow" not in maps and browser.rss_mb(pid) < 200
    assert "tensorflow" in Path(f"/proc/{_model_process(ws_server)}/maps").read_text()


@pytest.mark.slow
def test_ws_page_preloads_scripts_that_exist_and_links_no_cdn(ws_server):
    html = urllib.request.urlopen(ws_server.url, timeout=120).read().decode()
    assert "cdn.jsdelivr.net" not in html and "fontawesome" not in html.lower()
    preloads = re.findall(r'<link rel="preload" as="script" href="([^"]+)"', html)
    assert len(preloads) > 20 and preloads[0].endswith("/voila/static/voila.js")
    assert html.index('rel="preload"') < html.index("jupyter-config-data")  # sent before the kernel starts
    for href in preloads:
        with urllib.request.urlopen(ws_server.url.rstrip("/") + href, timeout=30) as resp:
            assert resp.status == 200, href


@pytest.mark.slow
def test_ws_legacy_protocol_is_refused_and_the_page_still_works(ws_server):
    """Voila 0.5 parses a binary message to a legacy client as v1 and grows without bound (~48 MB/s)."""
    from tornado.websocket import WebSocketError

    with pytest.raises((WebSocketError, Exception)) as err:
        _ws(_visit, ws_server.url, [ws_visitor.drawn_png(1)], None)
    assert "400" in str(err.value)
    assert "refused a kernel websocket without the v1.kernel.websocket.jupyter.org subprotocol" in ws_server.log()
    results, _v = _ws(_visit, ws_server.url, [ws_visitor.drawn_png(1)])
    assert results[0][0]["state"] == "prediction"


@pytest.mark.slow
def test_ws_hostile_images_get_a_message_and_the_kernel_stays_small(ws_server):
    big = io.BytesIO()
    Image.new("RGBA", (10000, 10000)).save(big, "PNG")  # 0.4 MB that decodes to 400 MB (3 GB as floats)
    results, visitor = _ws(_visit, ws_server.url, [big.getvalue(), b"\x89PNG garbage", ws_visitor.drawn_png(1)])
    assert [r["state"] for r, _ms in results] == ["invalid", "invalid", "prediction"]
    assert "at most 1024x1024" in results[0][0]["html"]
    assert browser.rss_mb(next(p for p, c in ws_server.processes().items() if visitor.kernel_id in c)) < 200


@pytest.mark.slow
def test_ws_a_forced_error_shows_the_friendly_message_and_nothing_internal(ws_server):
    import os
    import signal

    record = ws_server.root_dir / "home" / "model-cache" / NAME / "0.1.0" / "version.json"
    good = record.read_bytes()
    record.write_text("{damaged")  # the model process refuses: its error names server paths
    try:
        # Linger: ipykernel forwards what reaches the kernel's stderr a moment later.
        results, visitor = _ws(_visit, ws_server.url, [ws_visitor.drawn_png(1)], ws_visitor.V1, 3.0)
    finally:
        record.write_bytes(good)
    assert results[0][0]["state"] == "error" and "Sorry, that prediction failed" in results[0][0]["html"]
    sent = "\n".join(visitor.received)
    for leak in ("Traceback", "ModelServerError", "version.json", str(ws_server.root_dir), "site-packages", "File \\\""):
        assert leak not in sent, leak
    log = ws_server.log()
    assert "prediction failed" in log and "Traceback" in log and "version.json" in log  # the server's log has it
    # A dead model process is restarted by the server; pages work again.
    os.kill(_model_process(ws_server), signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        results, _v = _ws(_visit, ws_server.url, [ws_visitor.drawn_png(1)])
        if results[0][0]["state"] == "prediction" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert results[0][0]["state"] == "prediction"
    assert "the model process exited with -9; restarting it" in ws_server.log()


@pytest.mark.slow
def test_ws_kernel_cap_gives_a_busy_page_and_culled_kernels_free_slots(tmp_path, tiny_models):
    import asyncio

    env = _served(tmp_path, tiny_models[0], "run-cap")

    async def loads(url, n):
        visitors = [ws_visitor.Visitor(url) for _ in range(n)]
        got = await asyncio.gather(*(v.load() for v in visitors), return_exceptions=True)
        return visitors, got

    with browser.VoilaServer(tmp_path, env, cull_idle_timeout=3, cull_interval=1, max_kernels=3) as srv:
        # Many page loads that never draw (nor open a websocket): three kernels, then busy pages.
        visitors, got = _ws(loads, srv.url, 6)
        assert sum(isinstance(g, str) for g in got) == 3, got
        busy = [v for v in visitors if v.status == 503]
        assert len(busy) == 3 and all("busy" in v.page and "try again" in v.page for v in busy)
        assert "Traceback" not in busy[0].page
        assert sum("ipykernel" in c for c in srv.processes().values()) == 3
        # Kernels without a page connected are culled within seconds here (60 s by default)...
        deadline = time.monotonic() + 60
        while sum("ipykernel" in c for c in srv.processes().values()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert sum("ipykernel" in c for c in srv.processes().values()) == 0, srv.log()
        # ...and the next visitor gets a working page.
        results, _v = _ws(_visit, srv.url, [ws_visitor.drawn_png(1)])
        assert results[0][0]["state"] == "prediction"


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_ws_stopping_the_server_leaves_no_process(tmp_path, tiny_models, sig):
    import os
    import signal

    env = _served(tmp_path, tiny_models[0], "run-stop")
    with browser.VoilaServer(tmp_path, env) as srv:
        results, _v = _ws(_visit, srv.url, [ws_visitor.drawn_png(1)])
        assert results[0][0]["state"] == "prediction"
        children = srv.processes()
        assert any("modelserver" in c for c in children.values()) and any("ipykernel" in c for c in children.values())
        srv.proc.send_signal(getattr(signal, sig))
        srv.proc.wait(timeout=30)

        def alive(pid):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
            return " Z " not in stat  # a zombie is gone, only not yet reaped by init

        deadline = time.monotonic() + 30
        while any(alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [children[p] for p in children if alive(p)]


@pytest.mark.slow
def test_ws_a_broken_registry_page_has_the_notice_and_no_traceback(tmp_path):
    """What the kernel logs while rendering the page (a traceback naming server paths) stays in the server log."""
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "registry.db").write_bytes(b"this is not a database" * 100)
    env = browser.isolated_env(tmp_path, DIGITOPS_HOME=str(tmp_path / "home"), DIGITOPS_RUNS=str(tmp_path / "runs"))
    env = server.server_env(tmp_path, env)

    async def visit(url):
        visitor = ws_visitor.Visitor(url)
        await visitor.load()
        await visitor.connect()
        await visitor.drain(2.0)
        visitor.close()
        return visitor

    with browser.VoilaServer(tmp_path, env) as srv:
        visitor = _ws(visit, srv.url)
        log = srv.log()
    seen = visitor.page + "\n".join(visitor.received)
    assert "The model could not be loaded" in seen
    for leak in ("Traceback", str(tmp_path), "site-packages", "DatabaseError"):
        assert leak not in seen, leak
    assert "could not fetch the model" in log and "Traceback" in log


@pytest.mark.slow
def test_ws_kernel_cap_counts_a_rendering_page_once(tmp_path, tiny_models):
    """A page whose kernel has started but which is still rendering must not count twice toward the cap."""
    import asyncio

    env = _served(tmp_path, tiny_models[0], "run-cap2")

    async def two(srv):
        from tornado.httpclient import AsyncHTTPClient

        started = asyncio.Event()
        body = []

        def chunk(data):
            body.append(data)
            if b"kernelId" in b"".join(body):
                started.set()  # the page names its kernel: it runs, and the page is still rendering

        client = AsyncHTTPClient(force_instance=True)
        first = asyncio.ensure_future(client.fetch(srv.url, streaming_callback=chunk, request_timeout=120))
        await asyncio.wait_for(started.wait(), 120)
        second = ws_visitor.Visitor(srv.url)
        await second.load()
        return (await first).code, second.status

    with browser.VoilaServer(tmp_path, env, max_kernels=2) as srv:
        assert _ws(two, srv) == (200, 200), srv.log()


# ----------------------------------------------------------------------------- feedback (field drawings)


def _fb_state(app) -> str:
    return re.search(r'data-state="(\w+)"', app.feedback.status.value).group(1)


def test_feedback_buttons_appear_after_a_prediction_and_keep_one_record(digit_app):
    from digitops.feedback.store import LocalFeedbackStore

    assert digit_app.feedback.widget.layout.display == "none"
    assert digit_app.feedback.submit(4) == "none"  # nothing predicted yet: nothing kept
    png = drawn_png([[(0.5, 0.2), (0.5, 0.8)]])
    digit_app.canvas._on_frontend_msg(None, {"type": "image"}, [memoryview(png)])
    said = digit_app.predict()
    assert digit_app.feedback.widget.layout.display == "flex"
    assert "used to test future models" in digit_app.feedback.widget.children[2].value
    assert digit_app.feedback.submit(4) == "kept" and "kept as a 4" in digit_app.feedback.status.value
    assert digit_app.feedback.submit(4) == "unchanged"
    digit_app.feedback.wrong[4].click()  # the button itself
    [rec] = LocalFeedbackStore().records()
    assert (rec.label, rec.predicted, rec.model_version) == (4, said, digit_app.version.version)
    assert (LocalFeedbackStore().drawings / f"{rec.hash}.png").read_bytes() == png
    digit_app.feedback.right.click()  # "Right": the prediction was the digit
    assert LocalFeedbackStore().records()[0].label == said
    digit_app.clear()
    assert digit_app.feedback.widget.layout.display == "none" and digit_app.feedback.submit(1) == "none"
    assert all(_widget_buffers(wd) == [] for wd in digit_app.feedback.widget.children)


def test_feedback_off_shows_no_buttons_and_keeps_nothing(home, tiny_models, monkeypatch):
    from digitops.dashboard.app import DigitApp
    from digitops.feedback.store import LocalFeedbackStore

    monkeypatch.setenv("DIGITOPS_FEEDBACK", "off")
    mv = SqliteRegistry().register(NAME, tiny_models[0], "run-x", status="production")
    app = DigitApp(mv, loader.load())
    app.canvas._on_frontend_msg(None, {"type": "image"}, [memoryview(drawn_png([[(0.5, 0.2), (0.5, 0.8)]]))])
    assert app.predict() is not None
    assert app.feedback.widget.layout.display == "none" and app.feedback.submit(4) == "none"
    assert not (home / "feedback").exists() or LocalFeedbackStore().records() == []


def test_feedback_store_failure_is_a_message_and_the_page_stays_usable(digit_app, capsys):
    (digit_app_home := Path(__import__("os").environ["DIGITOPS_HOME"])).mkdir(parents=True, exist_ok=True)
    (digit_app_home / "feedback").write_text("a file where the store's folder should be")
    digit_app.canvas._on_frontend_msg(None, {"type": "image"}, [memoryview(drawn_png([[(0.5, 0.2), (0.5, 0.8)]]))])
    assert digit_app.predict() is not None
    assert digit_app.feedback.submit(4) == "error" and _fb_state(digit_app) == "error"
    shown = digit_app.feedback.status.value
    assert "could not be kept" in shown and "Traceback" not in shown and str(digit_app_home) not in shown
    assert digit_app.predict() is not None  # predicting still works


@pytest.mark.slow
@pytest.mark.browser
def test_browser_wrong_it_is_4_keeps_one_record_even_when_pressed_twice(page, voila, monkeypatch):
    from digitops.cli import cli

    srv, mv = voila
    monkeypatch.setenv("DIGITOPS_HOME", srv.env["DIGITOPS_HOME"])
    monkeypatch.delenv("DIGITOPS_FEEDBACK_DIR", raising=False)
    browser.click_and_wait(page, "button.dg-clear")
    assert not page.locator(".dg-feedback").is_visible()
    browser.draw(page, browser.DIGIT_STROKES[4])
    assert browser.click_and_wait(page, "button.dg-predict")["state"] == "prediction"
    assert page.locator(".dg-feedback").is_visible() and "used to test future models" in page.inner_text(".dg-feedback")
    states = []
    for _ in range(2):
        seq = int(page.get_attribute(".dg-fb-status", "data-seq") or 0)
        page.click("button.dg-fb-wrong-4")
        page.wait_for_function(
            "s => Number(document.querySelector('.dg-fb-status').dataset.seq) > s", arg=seq, timeout=30_000
        )
        states.append(page.get_attribute(".dg-fb-status", "data-state"))
    assert states == ["kept", "unchanged"], (states, srv.log())
    browser.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(browser.ARTIFACTS / "dashboard-feedback.png"), full_page=True)
    listed = CliRunner().invoke(cli, ["feedback", "list", "--json"])
    records = [json.loads(line) for line in listed.output.splitlines()]
    assert listed.exit_code == 0 and len(records) == 1, listed.output
    assert records[0]["label"] == 4 and records[0]["model_version"] == mv.version
    assert records[0]["predicted"] in range(10) and len(records[0]["probabilities"]) == 10
