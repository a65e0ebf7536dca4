"""``python -m digitops.dashboard.voila_app``: Voila with the dashboard's limits and its model process.

Same command line as ``voila``, plus:

- a model process (:mod:`modelserver`) started before the first kernel and
  stopped with the server (and by Linux if the server is killed), restarted if
  it dies, whose socket kernels find in ``$DIGITOPS_MODEL_SOCKET``;
- at most ``--DigitopsVoila.max_kernels`` kernels: the visitor after that gets
  a "busy, try again" page (HTTP 503) instead of a kernel;
- kernel websockets only on the ``v1.kernel.websocket.jupyter.org``
  subprotocol (what browsers use): Voila 0.5 parses every binary message as
  v1, and a legacy-protocol message makes it build a list with billions of
  entries, growing the server without bound;
- the page from the ``digitops`` template (``templates/digitops``): Voila's
  lab template with every script preloaded, no Font Awesome from a CDN, and
  only the front-end extensions the page uses
  (``--DigitopsVoila.fast_page=False``: Voila's own, as the benchmark's "before").
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupyter_core.utils import ensure_async
from tornado import ioloop
from traitlets import Bool, Int
from voila.app import Voila
from voila.tornado.handler import TornadoVoilaHandler
from voila.tornado.kernel_websocket_handler import VoilaKernelWebsocketHandler

from digitops.dashboard import modelserver

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
DEFAULT_MAX_KERNELS = 60
#: Our page template: found before Voila's own, it extends ``voila/templates/lab``.
TEMPLATE_DIR = Path(__file__).parent / "templates" / "digitops"
#: The front-end extensions the page needs (widgets and the canvas); others (Pygments' theme for
#: code cells the page never shows) would only add scripts to every page load.
PAGE_EXTENSIONS = ["@jupyter-widgets/jupyterlab-manager", "@voila-dashboards/widgets-manager8", "anywidget"]

BUSY_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>Busy</title></head>
<body style="font-family: sans-serif; max-width: 640px; margin: 60px auto;">
<div class="dg-busy" data-kind="busy">
<h2>The digit recogniser is busy</h2>
<p>Too many people are drawing right now. Please try again in a minute.</p>
</div></body></html>
"""


class _Reserved:
    """The kernel manager as one page's handler sees it: starting its kernel ends its reservation."""

    def __init__(self, manager: Any, release: Any) -> None:
        self._manager, self._release = manager, release

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)

    async def start_kernel(self, **kwargs: Any) -> Any:
        try:
            return await ensure_async(self._manager.start_kernel(**kwargs))
        finally:
            self._release()  # from here the kernel is listed by the manager, or failed to start

    async def get_rendered_notebook(self, *args: Any, **kwargs: Any) -> Any:
        # A preheated kernel is listed already; the page may still wait for its rendering.
        try:
            return await self._manager.get_rendered_notebook(*args, **kwargs)
        finally:
            self._release()


class CappedVoilaHandler(TornadoVoilaHandler):
    """The page: a kernel per visitor while fewer than ``max_kernels`` run, else the busy page.

    A page holds a reservation from the check until its kernel is started
    (rendering awaits several things first), so concurrent visitors cannot
    overshoot the cap, and a started kernel is counted once.
    """

    _reserved = False

    @property
    def kernel_manager(self) -> Any:  # type: ignore[override]
        manager = super().kernel_manager
        return _Reserved(manager, self._release) if self._reserved else manager

    def _release(self) -> None:
        if self._reserved:
            self._reserved = False
            self.settings["digitops_pages"]["starting"] -= 1

    async def get(self, path: str | None = None) -> None:
        pages = self.settings["digitops_pages"]
        cap = int(self.settings.get("digitops_max_kernels") or 0)
        in_use = len(super().kernel_manager.list_kernel_ids()) + pages["starting"]
        if cap and in_use >= cap:
            self.log.warning("busy: %d kernels running or starting (limit %d); sent the busy page", in_use, cap)
            self.set_status(503)
            self.set_header("Retry-After", "60")
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(BUSY_HTML)
            return
        pages["starting"] += 1
        self._reserved = True
        try:
            await super().get(path)
        finally:
            self._release()  # a preheated page, or one that failed before starting a kernel


class V1OnlyWebsocketHandler(VoilaKernelWebsocketHandler):
    """Kernel websockets that refuse the legacy (no subprotocol) wire format."""

    async def get(self, kernel_id: str) -> None:  # type: ignore[override]
        offered = [p.strip() for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if V1_PROTOCOL not in offered:
            self.log.warning("refused a kernel websocket without the %s subprotocol", V1_PROTOCOL)
            self.set_status(400)
            self.finish(f"kernel websockets need the {V1_PROTOCOL} subprotocol")
            return
        await super().get(kernel_id)


class DigitopsVoila(Voila):
    """Voila plus the model process, the kernel cap and the v1-only websocket."""

    name = "digitops-voila"
    max_kernels = Int(DEFAULT_MAX_KERNELS, config=True, help="Most kernels at once (0: no limit).")
    model_process = Bool(True, config=True, help="Serve predictions from one model process.")
    fast_page = Bool(True, config=True, help="Serve the page from the digitops template (preloads, no CDN).")

    _model_proc: Any = None
    _model_dir: str | None = None

    def init_settings(self) -> dict[str, Any]:
        settings = super().init_settings()
        settings["digitops_max_kernels"] = self.max_kernels
        settings["digitops_pages"] = {"starting": 0}
        return settings

    def setup_template_dirs(self) -> None:
        super().setup_template_dirs()
        if self.fast_page:
            self.template_paths.insert(0, str(TEMPLATE_DIR))
            if not self.voila_configuration.extension_allowlist:  # none configured
                self.voila_configuration.extension_allowlist = list(PAGE_EXTENSIONS)

    def init_handlers(self) -> list[Any]:
        replace = {TornadoVoilaHandler: CappedVoilaHandler, VoilaKernelWebsocketHandler: V1OnlyWebsocketHandler}
        return [(h[0], replace.get(h[1], h[1]), *h[2:]) for h in super().init_handlers()]

    def start(self) -> None:
        if self.model_process:
            self._start_model()
        super().start()

    def _start_model(self) -> None:
        self._model_dir = tempfile.mkdtemp(prefix="digitops-model-")
        path = os.path.join(self._model_dir, "model.sock")
        os.environ[modelserver.SOCKET_ENV] = path  # kernels inherit the server's environment
        self._model_proc = modelserver.spawn(path)
        # Listen only once the model is loaded: a readiness probe that answers means a first Predict is fast.
        if not modelserver.wait_ready(path, self._model_proc):
            self.log.error("the model process did not start; pages will show an error until it does")
        # Restart it if it dies: kernels get a friendly error meanwhile, never a hang.
        ioloop.PeriodicCallback(lambda: self._watch_model(path), 2000).start()

    def _watch_model(self, path: str) -> None:
        if self._model_proc is not None and self._model_proc.poll() is not None:
            self.log.error("the model process exited with %s; restarting it", self._model_proc.returncode)
            self._model_proc = modelserver.spawn(path)

    def stop(self) -> None:
        proc, self._model_proc = self._model_proc, None
        modelserver.stop(proc)
        if self._model_dir:
            shutil.rmtree(self._model_dir, ignore_errors=True)
        super().stop()


def main(argv: list[str] | None = None) -> None:
    """Run the dashboard server (arguments as for ``voila``)."""
    DigitopsVoila.launch_instance(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
