"""The digit dashboard's widgets and behaviour; ``dashboards/digits.ipynb`` only displays :func:`build`.

Layout: a drawing canvas with Predict / Clear (and "predict as I draw"),
the predicted digit and its confidence, one bar per digit, the 28x28 image
the model saw, and a card describing the served model version.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable

import ipywidgets as w
import numpy as np

from digitops import config
from digitops.dashboard import loader, modelserver
from digitops.dashboard.canvas import DrawingCanvas
from digitops.dashboard.feedback import FeedbackPanel
from digitops.preprocess import EMPTY_MESSAGE, preprocess, to_png

log = logging.getLogger("digitops.dashboard")

#: Set by ``digitops dashboard``: the runs folder as seen from Voila's root, whose reports it serves.
FILES_ENV = "DIGITOPS_DASHBOARD_FILES"

_STYLE = """
<style>
.dg-result { font-size: 15px; min-height: 76px; }
.dg-result .dg-digit { font-size: 56px; font-weight: 700; line-height: 1; margin-right: 12px; }
.dg-result .dg-conf { font-size: 18px; color: #333; }
.dg-result .dg-ms { font-size: 12px; color: #888; }
.dg-message { color: #8a5300; background: #fff6e0; padding: 8px 10px; border-radius: 6px; }
.dg-error { color: #8a0000; background: #ffecec; padding: 8px 10px; border-radius: 6px; }
.dg-bars { font-family: monospace; font-size: 13px; width: 300px; }
.dg-bar-row { display: flex; align-items: center; height: 20px; }
.dg-bar-label { width: 16px; }
.dg-bar-track { flex: 1; background: #eee; height: 14px; margin: 0 6px; border-radius: 3px; }
.dg-bar-fill { background: #4a78c2; height: 14px; border-radius: 3px; }
.dg-bar-row.dg-top .dg-bar-fill { background: #d9822b; }
.dg-bar-value { width: 52px; text-align: right; }
.dg-seen-img { image-rendering: pixelated; border: 1px solid #999; }
.dg-card { border: 1px solid #ccc; border-radius: 6px; padding: 8px 12px; font-size: 13px; }
.dg-card table td { padding: 1px 8px 1px 0; }
.dg-notice { max-width: 720px; padding: 16px 20px; border: 1px solid #d9b44a; background: #fffaf0; border-radius: 8px; }
.dg-notice pre { background: #f4f4f4; padding: 8px; }
.dg-fb-note { font-size: 12px; color: #666; max-width: 420px; }
.dg-fb-status { font-size: 13px; min-height: 18px; }
</style>
"""


_IDLE = "Draw a digit, then press Predict."
_FAILED = "Sorry, that prediction failed. Please clear and try again."


def seen_html(image: np.ndarray) -> str:
    """The 28x28 image the model saw as an <img> with a data: URL.

    Text, not a binary widget buffer: Voila 0.5 mishandles binary messages on
    the legacy websocket protocol (the server grows without bound), and a few
    hundred bytes of base64 cost nothing.
    """
    data = base64.b64encode(to_png(image)).decode("ascii")
    return f'<img class="dg-seen-img" width="140" height="140" alt="28x28 input" src="data:image/png;base64,{data}">'


def _bars_html(proba: np.ndarray | None) -> str:
    values = np.zeros(10) if proba is None else np.asarray(proba, dtype=float)
    top = int(values.argmax()) if proba is not None else -1
    rows = []
    for digit, p in enumerate(values):
        cls = "dg-bar-row dg-top" if digit == top else "dg-bar-row"
        rows.append(
            f'<div class="{cls}" data-digit="{digit}" data-p="{p:.6f}">'
            f'<span class="dg-bar-label">{digit}</span>'
            f'<span class="dg-bar-track"><span class="dg-bar-fill" style="display:block;width:{100 * p:.1f}%"></span></span>'
            f'<span class="dg-bar-value">{100 * p:5.1f}%</span></div>'
        )
    return '<div class="dg-bars">' + "".join(rows) + "</div>"


def _report_link(version: Any) -> str:
    """A link to the run's page (Comet) or its local HTML report, else the run id as text."""
    run_id = html.escape(version.run_id)
    if version.url:
        label = "Comet experiment" if "comet" in version.url else "run page"
        return f'<a href="{html.escape(version.url)}" target="_blank" rel="noopener">{run_id}</a> ({label})'
    served = config.env(FILES_ENV)
    report_dir = config.runs_dir() / version.run_id
    for report in ("evaluate.html", "train.html"):
        if served and (report_dir / report).is_file():
            href = f"voila/files/{served.strip('/')}/{version.run_id}/{report}"
            return f'<a href="{html.escape(href)}" target="_blank" rel="noopener">{run_id}</a> (report)'
    return f"{run_id}"


def _when(timestamp: str) -> str:
    try:
        return datetime.fromisoformat(timestamp).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError):
        return timestamp or "unknown"


def model_card_html(version: Any) -> str:
    """The model card: name, version, status, registration date, test accuracy, run link."""
    acc = (version.metrics or {}).get("test_accuracy")
    try:
        acc_text = f"{100 * float(acc):.2f} %"  # Comet returns metric values as strings
    except (TypeError, ValueError):
        acc_text = "not recorded"
    rows = [
        ("Model", html.escape(version.name)),
        ("Version", f'<span class="dg-version">{html.escape(version.version)}</span>'),
        ("Status", html.escape(version.status)),
        ("Registered", html.escape(_when(version.created_at))),
        ("Test accuracy", acc_text),
        ("Run", _report_link(version)),
    ]
    body = "".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in rows)
    return (
        f'<div class="dg-card" data-version="{html.escape(version.version)}">'
        f"<b>Served model</b><table>{body}</table></div>"
    )


class DigitApp:
    """The dashboard: a canvas, controls and result views bound to one model version.

    ``model`` is the loaded model, a future that delivers it, or a function
    that starts loading it and returns that future (called when a browser has
    rendered the canvas, or at the first Predict). Either way the page renders,
    and the visitor can start drawing, while Keras loads in the background.
    """

    #: How long a Predict click waits for a model still loading in the background.
    LOAD_WAIT_S = 120.0

    def __init__(
        self,
        version: Any,
        model: loader.LoadedModel | Future[loader.LoadedModel] | Callable[[], Future[loader.LoadedModel]],
    ) -> None:
        self.version = version
        # A callable starts the load on demand: when the canvas is on screen or at the first Predict.
        self._model = model
        self._model_lock = threading.Lock()
        self.seq = 0
        self.canvas = DrawingCanvas()
        self.predict_button = w.Button(description="Predict", button_style="primary")
        self.clear_button = w.Button(description="Clear")
        self.live = w.Checkbox(value=False, description="Predict as I draw", indent=False)
        self.result = w.HTML(self._result_html("idle", _IDLE))
        self.bars = w.HTML(_bars_html(None))
        self.seen = w.HTML(seen_html(np.zeros((28, 28), np.uint8)))
        self.card = w.HTML(model_card_html(version))
        self.feedback = FeedbackPanel(version)
        for widget, cls in (
            (self.predict_button, "dg-predict"),
            (self.clear_button, "dg-clear"),
            (self.live, "dg-live"),
            (self.result, "dg-result-box"),
            (self.bars, "dg-bars-box"),
            (self.seen, "dg-seen-box"),
            (self.card, "dg-card-box"),
        ):
            widget.add_class(cls)
        self.predict_button.on_click(lambda _b: self.predict())
        self.clear_button.on_click(lambda _b: self.clear())
        self.canvas.on_image(self._on_stroke)
        self.canvas.on_ready(self._start_loading)

    def _start_loading(self) -> Future[loader.LoadedModel] | loader.LoadedModel:
        with self._model_lock:
            if callable(self._model) and not isinstance(self._model, Future):
                self._model = self._model()
            return self._model

    def _result_html(self, state: str, inner: str, digit: int | None = None) -> str:
        attrs = f'data-state="{state}" data-seq="{self.seq}"'
        if digit is not None:
            attrs += f' data-digit="{digit}"'
        return f'<div class="dg-result" {attrs}>{inner}</div>'

    def _on_stroke(self, _png: bytes) -> None:
        if self.live.value:
            self.predict()

    def predict(self) -> int | None:
        """Predict the digit on the canvas and show it; returns the digit, or None if nothing was drawn."""
        self.seq += 1
        self.feedback.forget()
        try:
            try:
                image = preprocess(self.canvas.png) if self.canvas.png is not None else None
            except ValueError as exc:  # too large, undecodable: the message is written for visitors
                log.warning("refused a drawing: %s", exc)
                self.result.value = self._result_html("invalid", f'<div class="dg-message">{html.escape(str(exc))}</div>')
                self.bars.value = _bars_html(None)
                return None
            if image is None:
                self.result.value = self._result_html("empty", f'<div class="dg-message">{EMPTY_MESSAGE}</div>')
                self.bars.value = _bars_html(None)
                return None
            model = self._start_loading()
            loaded = model.result(self.LOAD_WAIT_S) if isinstance(model, Future) else model
            start = time.perf_counter()
            proba = loader.predict(loaded, image)
            ms = 1000 * (time.perf_counter() - start)
            digit = int(proba.argmax())
            self.seen.value = seen_html(image)
            self.bars.value = _bars_html(proba)
            self.result.value = self._result_html(
                "prediction",
                f'<span class="dg-digit">{digit}</span>'
                f'<span class="dg-conf">{100 * float(proba[digit]):.1f} % confident</span>'
                f'<div class="dg-ms">model {ms:.1f} ms</div>',
                digit=digit,
            )
            self.feedback.offer(self.canvas.png, digit, proba)
            return digit
        except Exception:
            # Visitors get a short message; the traceback goes to the server log only.
            log.exception("prediction failed")
            self.result.value = self._result_html("error", f'<div class="dg-error">{_FAILED}</div>')
            return None

    def clear(self) -> None:
        """Blank the canvas and the result views."""
        self.seq += 1
        self.feedback.forget()
        self.canvas.clear()
        self.result.value = self._result_html("idle", _IDLE)
        self.bars.value = _bars_html(None)
        self.seen.value = seen_html(np.zeros((28, 28), np.uint8))

    def widget(self) -> w.Widget:
        """The whole page as one widget."""
        style = w.HTML(_STYLE)
        left = w.VBox([self.canvas, w.HBox([self.predict_button, self.clear_button]), self.live])
        seen = w.VBox([w.HTML("<b>What the model saw (28x28)</b>"), self.seen])
        right = w.VBox([self.result, self.bars, self.feedback.widget, w.HBox([seen, self.card])])
        right.layout.margin = "0 0 0 24px"
        return w.VBox([style, w.HBox([left, right])])


def notice(title: str, text: str, kind: str) -> w.Widget:
    """A friendly full-page notice (no model yet, registry unreachable) instead of a traceback."""
    return w.HTML(
        _STYLE + f'<div class="dg-notice" data-kind="{kind}"><h3>{html.escape(title)}</h3>'
        f"<pre>{html.escape(text)}</pre></div>"
    )


def build() -> w.Widget:
    """The dashboard for the model to serve, or a notice explaining what is missing.

    Finding and verifying the model file is quick and happens first, so a
    missing or tampered model gives a notice. Keras (seconds to import) loads
    in a background thread: at once in a preheated kernel, else once the
    visitor's canvas is on screen.
    """
    _log_to_server()
    try:
        version = loader.resolve()
        path = loader.fetch(version)
    except loader.NoModelError as exc:
        return notice("No model to serve yet", str(exc), "no-model")
    except loader.ChecksumError as exc:
        log.error("%s", exc)
        return notice("The model file failed verification", str(exc), "checksum")
    except Exception as exc:  # registry down, bad credentials, unreadable file
        log.exception("could not fetch the model")
        return notice(
            "The model could not be loaded",
            # The details stay in the server log: they may name hosts or paths visitors should not see.
            f"{type(exc).__name__}. Check the registry settings and the server log, then reload.",
            "load-error",
        )

    remote = modelserver.client_from_env(version)
    if remote is not None:
        # Under `digitops dashboard`: the server's model process predicts; this kernel stays small.
        return DigitApp(version, remote).widget()

    def start() -> Future[loader.LoadedModel]:
        future = _EXECUTOR.submit(loader.load_file, version, path)
        future.add_done_callback(_log_failure)
        return future

    if os.environ.get("VOILA_PREHEAT", "True") == "True":
        # A preheated kernel (or plain Jupyter) has time now: load before anyone asks.
        return DigitApp(version, start()).widget()
    # A visitor is waiting for this kernel's page: importing Keras now would compete with
    # rendering it, so the load starts once the canvas is on screen; it is usually done
    # before the first digit is drawn, and a Predict click waits for it otherwise.
    return DigitApp(version, start).widget()


_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="digitops-model")


def _log_failure(future: Future[Any]) -> None:
    if future.exception() is not None:
        log.error("loading the model failed", exc_info=future.exception())


def _server_log_stream() -> Any:
    """The server's log: the kernel's original stderr, not the one forwarded to the page.

    ipykernel redirects file descriptor 2 into a pipe whose text it sends to
    the visitor's browser (``sys.__stderr__`` included); it keeps a copy of
    the original descriptor, which is Voila's terminal or the container log.
    """
    original = getattr(sys.stderr, "_original_stdstream_copy", None)
    if isinstance(original, int):
        try:
            return open(os.dup(original), "w", buffering=1, encoding="utf-8", errors="replace")
        except OSError:
            pass
    return sys.__stderr__  # not captured: a plain process, or a kernel with capture_fd_output off


def _log_to_server() -> None:
    if not any(getattr(h, "_digitops", False) for h in log.handlers):
        handler = logging.StreamHandler(_server_log_stream())
        handler.setFormatter(logging.Formatter("[digitops.dashboard] %(levelname)s %(message)s"))
        handler._digitops = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
