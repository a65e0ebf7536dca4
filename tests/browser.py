"""Voila + headless Chromium harness for the dashboard's browser tests and benchmark.

Voila runs as a real subprocess on a free loopback port with Jupyter's
folders moved to a temporary directory; Chromium is Debian's
``/usr/bin/chromium`` driven by Playwright (never ``playwright install``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Sequence

from digitops.dashboard import server

CHROMIUM = os.environ.get("DIGITOPS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "dashboards" / "digits.ipynb"
ARTIFACTS = Path(os.environ.get("DIGITOPS_TEST_ARTIFACTS", REPO / "test-artifacts"))

# Strokes in canvas fractions (0..1): clear, MNIST-like shapes a person would draw.
Stroke = Sequence[tuple[float, float]]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40) -> list[tuple[float, float]]:
    import math

    return [(cx + rx * math.sin(2 * math.pi * i / n), cy - ry * math.cos(2 * math.pi * i / n)) for i in range(n + 1)]


DIGIT_STROKES: dict[int, list[Stroke]] = {
    0: [_ellipse(0.5, 0.5, 0.2, 0.3)],
    1: [[(0.52, 0.18), (0.48, 0.82)]],
    7: [[(0.28, 0.2), (0.72, 0.2), (0.44, 0.82)]],
    4: [[(0.58, 0.18), (0.3, 0.6), (0.74, 0.6)], [(0.6, 0.38), (0.6, 0.84)]],
}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def isolated_env(tmp: Path, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """An environment whose Jupyter/IPython folders live under ``tmp`` and with no service credentials."""
    env = dict(os.environ if base is None else base)
    for key in ("COMET_API_KEY", "GITLAB_TOKEN", "DIGITOPS_MODEL_VERSION", "DIGITOPS_MODEL_CACHE", "JUPYTER_PATH"):
        env.pop(key, None)
    for key, sub in (
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("IPYTHONDIR", "ipython"),
        ("XDG_CACHE_HOME", "cache"),
    ):
        env[key] = str(tmp / "jupyter" / sub)
    env.update(extra)
    return env


class VoilaServer:
    """``voila dashboards/digits.ipynb`` as started by ``digitops dashboard``, on a free port."""

    def __init__(
        self,
        root_dir: Path,
        env: dict[str, str],
        *,
        preheat: bool = False,
        log_path: Path | None = None,
        cull_idle_timeout: int = server.CULL_IDLE_TIMEOUT,
        cull_interval: int = server.CULL_INTERVAL,
        max_kernels: int = server.MAX_KERNELS,
    ) -> None:
        self.root_dir = Path(root_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path or (self.root_dir / f"voila-{self.port}.log")
        # Like `digitops dashboard` run from a project root: the notebook sits below the root.
        notebook = self.root_dir / "dashboards" / NOTEBOOK.name
        notebook.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(NOTEBOOK, notebook)
        self.args = server.voila_command(
            notebook,
            port=self.port,
            preheat=preheat,
            root_dir=self.root_dir,
            runs_dir=Path(env["DIGITOPS_RUNS"]),
            cull_idle_timeout=cull_idle_timeout,
            cull_interval=cull_interval,
            max_kernels=max_kernels,
        )
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> "VoilaServer":
        """Start Voila and wait until it answers HTTP."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.args, cwd=self.root_dir, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        probe = self.url + "voila/static/voila.js"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"voila exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(probe, timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"voila did not answer on {self.url} within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        """The server's output so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def processes(self) -> dict[int, str]:
        """The server's child processes (model process, kernels): pid -> command line."""
        assert self.proc is not None
        out = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.proc.pid:
                    pid = int(stat.parent.name)
                    out[pid] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
        return out

    def stop(self) -> None:
        """Stop Voila and its kernels."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> "VoilaServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def rss_mb(pid: int, field: str = "VmRSS:", source: str = "status") -> float:
    """Resident memory of a process in MB (0 when it is gone); ``rss_mb(pid, "Pss:", "smaps_rollup")`` for PSS."""
    try:
        for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def launch_chromium(playwright: Any) -> Any:
    """Debian's headless Chromium through Playwright."""
    if not Path(CHROMIUM).is_file():
        raise RuntimeError(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)


def open_dashboard(browser: Any, url: str, timeout_ms: float = 60_000) -> tuple[Any, float]:
    """A new page on the dashboard and the seconds until its canvas could be drawn on."""
    page = browser.new_page(viewport={"width": 1100, "height": 820})
    # Voila's template links Font Awesome from a CDN; fail it at once instead of waiting on DNS.
    page.route("https://cdn.jsdelivr.net/**", lambda route: route.abort())
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("canvas.digitops-canvas[data-ready='1']", timeout=timeout_ms)
    return page, time.perf_counter() - start


def draw(page: Any, strokes: Iterable[Stroke], steps: int = 8) -> None:
    """Draw ``strokes`` (canvas fractions) with the mouse: press, move through the points, release."""
    box = page.locator("canvas.digitops-canvas").bounding_box()
    assert box is not None, "canvas not visible"

    def at(p: tuple[float, float]) -> tuple[float, float]:
        return box["x"] + p[0] * box["width"], box["y"] + p[1] * box["height"]

    for stroke in strokes:
        page.mouse.move(*at(stroke[0]))
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*at(point), steps=steps)
        page.mouse.up()


def result_seq(page: Any) -> int:
    """The result view's sequence number (bumped by every Predict or Clear)."""
    return int(page.get_attribute(".dg-result", "data-seq") or 0)


def wait_result(page: Any, after_seq: int, timeout_ms: float = 30_000) -> dict[str, Any]:
    """Wait for a result newer than ``after_seq``; its state, digit, probabilities and text."""
    page.wait_for_function(
        "s => { const e = document.querySelector('.dg-result'); return e && Number(e.dataset.seq) > s; }",
        arg=after_seq,
        timeout=timeout_ms,
    )
    return page.evaluate(
        """() => {
          const e = document.querySelector('.dg-result');
          const bars = [...document.querySelectorAll('.dg-bar-row')].map(r => Number(r.dataset.p));
          return {state: e.dataset.state, digit: e.dataset.digit === undefined ? null : Number(e.dataset.digit),
                  seq: Number(e.dataset.seq), text: e.innerText, probabilities: bars};
        }"""
    )


def click_and_wait(page: Any, selector: str) -> dict[str, Any]:
    """Click a dashboard button and return the result it produced."""
    before = result_seq(page)
    page.click(selector)
    return wait_result(page, before)


def predict_round_trip_ms(page: Any) -> float:
    """Milliseconds from a Predict click to the new probabilities in the page, timed inside the page."""
    return float(
        page.evaluate(
            """() => new Promise((resolve, reject) => {
              const result = document.querySelector('.dg-result');
              const seq = Number(result.dataset.seq);
              const t0 = performance.now();
              const obs = new MutationObserver(() => {
                const e = document.querySelector('.dg-result');
                if (e && Number(e.dataset.seq) > seq) { obs.disconnect(); resolve(performance.now() - t0); }
              });
              obs.observe(document.body, {subtree: true, childList: true, attributes: true});
              setTimeout(() => { obs.disconnect(); reject(new Error('no prediction within 30 s')); }, 30000);
              document.querySelector('button.dg-predict').click();
            })"""
        )
    )


def canvas_ink(page: Any) -> int:
    """Number of non-black pixels on the drawing canvas."""
    return int(
        page.evaluate(
            """() => {
              const c = document.querySelector('canvas.digitops-canvas');
              const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              let n = 0;
              for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 0) n++;
              return n;
            }"""
        )
    )
