"""The drawing canvas: an anywidget that hands Python one PNG per stroke."""

from __future__ import annotations

import pathlib
from typing import Any, Callable, Sequence

import anywidget
import traitlets

_HERE = pathlib.Path(__file__).parent


class DrawingCanvas(anywidget.AnyWidget):
    """A square black canvas drawn on with thick white strokes (mouse, pen or touch).

    After every stroke (on pointer-up) the browser sends the whole canvas as a
    PNG; :attr:`png` holds the latest one (None when blank) and the callbacks
    registered with :meth:`on_image` are called with it.
    """

    # Read once: anywidget would watch a Path for changes, which a server does not need.
    _esm = (_HERE / "canvas.js").read_text(encoding="utf-8")
    _css = (_HERE / "canvas.css").read_text(encoding="utf-8")

    size = traitlets.Int(280).tag(sync=True)
    line_width = traitlets.Int(28).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.png: bytes | None = None
        self.strokes = 0
        self._image_callbacks: list[Callable[[bytes], None]] = []
        self._ready_callbacks: list[Callable[[], None]] = []
        self.on_msg(self._on_frontend_msg)

    def on_image(self, callback: Callable[[bytes], None]) -> None:
        """Call ``callback(png_bytes)`` after each stroke."""
        self._image_callbacks.append(callback)

    def on_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when a browser has rendered the canvas (once per page view)."""
        self._ready_callbacks.append(callback)

    def clear(self) -> None:
        """Blank the canvas in the browser and forget the last image."""
        self.png = None
        self.strokes = 0
        self.send({"type": "clear"})

    def _on_frontend_msg(self, _widget: Any, content: dict[str, Any], buffers: Sequence[memoryview]) -> None:
        if not isinstance(content, dict):
            return
        if content.get("type") == "ready":
            for ready in self._ready_callbacks:
                ready()
            return
        if content.get("type") != "image" or not buffers:
            return
        self.png = bytes(buffers[0])
        self.strokes = int(content.get("strokes", self.strokes + 1))
        for callback in self._image_callbacks:
            callback(self.png)
