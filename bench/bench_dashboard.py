"""Dashboard latency: server-side inference, page to usable canvas, and Predict round trips in Chromium.

Server side: the dashboard's own path for one drawn image (preprocess, then
``predict_on_batch``), median and p95 over many single images, against
``model.predict`` on the same image as the baseline the dashboard avoids.
Browser side: Voila started like ``digitops dashboard`` (with and without a
preheated kernel) and Debian's headless Chromium; page load until the canvas
can be drawn on, and the round trip from a Predict click (or from the
pointer-up that ends a stroke, with "Predict as I draw") until the new
probabilities are in the page, timed inside the page.

Latency does not depend on the weights, so by default an untrained model of
the served architecture is registered in a temporary state folder.

    python bench/bench_dashboard.py [--inference 200] [--clicks 20] [--loads 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the Voila + Chromium harness is shared with the browser tests

TARGETS = {"predict_round_trip_ms": 250.0, "server_inference_ms": 5.0, "page_to_canvas_s": 5.0}


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"median": statistics.median(ordered), "p95": p95, "min": ordered[0], "n": len(ordered)}


def _drawn_png() -> bytes:
    import io

    from PIL import Image, ImageDraw

    im = Image.new("RGB", (280, 280), "black")
    ImageDraw.Draw(im).line([(80, 56), (200, 56), (124, 230)], fill="white", width=28)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _model_file(folder: Path, architecture: str) -> Path:
    from digitops import model

    return model.save(model.build(architecture, seed=0), folder / "model.keras")


def inference(path: Path, n: int = 200, baseline_n: int = 20) -> dict[str, Any]:
    """Per-image server-side latency (ms) of preprocess, predict_on_batch, both, and model.predict."""
    import keras
    import numpy as np

    from digitops import model as model_lib
    from digitops.preprocess import preprocess

    net = keras.models.load_model(path, compile=False)
    png = _drawn_png()
    image = preprocess(png)
    x = model_lib.as_input(image)
    for _ in range(5):  # warm-up: graph tracing is paid once per kernel, at load
        net.predict_on_batch(x)
    pre, infer, total = [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        img = preprocess(png)
        t1 = time.perf_counter()
        np.asarray(net.predict_on_batch(model_lib.as_input(img)))
        t2 = time.perf_counter()
        pre.append(1000 * (t1 - t0))
        infer.append(1000 * (t2 - t1))
        total.append(1000 * (t2 - t0))
    net.predict(x, verbose=0)
    base = []
    for _ in range(baseline_n):
        t0 = time.perf_counter()
        net.predict(x, verbose=0)
        base.append(1000 * (time.perf_counter() - t0))
    return {
        "preprocess_ms": _stats(pre),
        "predict_on_batch_ms": _stats(infer),
        "preprocess_plus_predict_ms": _stats(total),
        "baseline_model_predict_ms": _stats(base),
    }


_POINTER_UP_JS = """() => new Promise((resolve, reject) => {
  const c = document.querySelector('canvas.digitops-canvas');
  const r = c.getBoundingClientRect();
  const at = (fx, fy) => ({clientX: r.left + fx * r.width, clientY: r.top + fy * r.height,
                           pointerId: 7, bubbles: true, isPrimary: true, pointerType: 'mouse', button: 0});
  const seq = Number(document.querySelector('.dg-result').dataset.seq);
  c.dispatchEvent(new PointerEvent('pointerdown', at(0.5, 0.18)));
  for (let i = 1; i <= 10; i++) c.dispatchEvent(new PointerEvent('pointermove', at(0.5, 0.18 + 0.064 * i)));
  const obs = new MutationObserver(() => {
    const e = document.querySelector('.dg-result');
    if (e && Number(e.dataset.seq) > seq) { obs.disconnect(); resolve(performance.now() - t0); }
  });
  obs.observe(document.body, {subtree: true, childList: true, attributes: true});
  setTimeout(() => { obs.disconnect(); reject(new Error('no prediction within 30 s')); }, 30000);
  const t0 = performance.now();
  c.dispatchEvent(new PointerEvent('pointerup', at(0.5, 0.82)));
})"""


def browser(root: Path, clicks: int = 20, loads: int = 3) -> dict[str, Any]:
    """Page-to-canvas seconds (cold and preheated kernels) and Predict / pointer-up round trips (ms)."""
    from playwright.sync_api import sync_playwright

    import browser as harness
    from digitops.dashboard import server

    env = harness.isolated_env(root, DIGITOPS_HOME=str(root / "home"), DIGITOPS_RUNS=str(root / "runs"))
    env = server.server_env(root, env)
    out: dict[str, Any] = {}
    with sync_playwright() as pw:
        chromium = harness.launch_chromium(pw)
        try:
            with harness.VoilaServer(root, env, preheat=False) as srv:
                times = []
                for _ in range(loads):
                    page, seconds = harness.open_dashboard(chromium, srv.url)
                    times.append(seconds)
                    page.close()
                out["page_to_canvas_s"] = _stats(times)
            with harness.VoilaServer(root, env, preheat=True) as srv:
                times = []
                for _ in range(loads):
                    time.sleep(12)  # let the pool refill: each visit takes the preheated kernel
                    page, seconds = harness.open_dashboard(chromium, srv.url)
                    times.append(seconds)
                    page.close()
                out["page_to_canvas_preheated_s"] = _stats(times)

                page, _ = harness.open_dashboard(chromium, srv.url)
                harness.draw(page, harness.DIGIT_STROKES[7])
                harness.click_and_wait(page, "button.dg-predict")  # model ready, first-call costs paid
                out["predict_round_trip_ms"] = _stats([harness.predict_round_trip_ms(page) for _ in range(clicks)])
                harness.click_and_wait(page, "button.dg-clear")
                page.check(".dg-live input[type=checkbox]")
                ups = []
                for _ in range(clicks):
                    ups.append(float(page.evaluate(_POINTER_UP_JS)))
                out["pointer_up_round_trip_ms"] = _stats(ups)
                page.close()
        finally:
            chromium.close()
    return out


def run(inference_n: int = 200, clicks: int = 20, loads: int = 3, architecture: str = "cnn",
        with_browser: bool = True) -> dict[str, Any]:
    """All dashboard measurements as one dict (see the module docstring)."""
    from digitops.registry.sqlite import SqliteRegistry

    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        root = Path(tmp)
        path = _model_file(root, architecture)
        results: dict[str, Any] = {"architecture": architecture, "server": inference(path, inference_n)}
        if with_browser:
            reg = SqliteRegistry(root / "home" / "registry.db", root / "home" / "models")
            reg.register("mnist-digits", path, "bench", status="production")
            results["browser"] = browser(root, clicks, loads)
    return results


def table(results: dict[str, Any]) -> str:
    rows = [("measure", "median", "p95", "n", "target")]
    for key, s in results["server"].items():
        target = f"< {TARGETS['server_inference_ms']:g} ms" if key == "predict_on_batch_ms" else ""
        rows.append((f"server {key}", f"{s['median']:.2f}", f"{s['p95']:.2f}", str(s["n"]), target))
    for key, s in results.get("browser", {}).items():
        unit = "s" if key.endswith("_s") else "ms"
        target = ""
        if key == "page_to_canvas_preheated_s" or key == "page_to_canvas_s":
            target = f"< {TARGETS['page_to_canvas_s']:g} s"
        elif key.endswith("round_trip_ms"):
            target = f"< {TARGETS['predict_round_trip_ms']:g} ms"
        rows.append((f"browser {key}", f"{s['median']:.2f}", f"{s['p95']:.2f}", str(s["n"]), target))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inference", type=int, default=200, help="single images timed server-side")
    parser.add_argument("--clicks", type=int, default=20, help="Predict clicks (and strokes) timed in Chromium")
    parser.add_argument("--loads", type=int, default=3, help="page loads timed per server mode")
    parser.add_argument("--architecture", default="cnn")
    parser.add_argument("--no-browser", action="store_true", help="server-side numbers only")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = run(args.inference, args.clicks, args.loads, args.architecture, not args.no_browser)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
