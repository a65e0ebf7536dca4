"""A simulated dashboard visitor speaking the real Jupyter kernel websocket protocol (loopback only).

It does what the page's JavaScript does: load the page (Voila starts and
runs a kernel for it), open the kernel's websocket with the
``v1.kernel.websocket.jupyter.org`` subprotocol, ask for every widget's
state, then send the canvas a drawn PNG and click Predict, reading the
result widget's update. Used by the load and abuse tests and by
``bench/bench_dashboard.py``; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.websocket import WebSocketClientConnection, websocket_connect

V1 = "v1.kernel.websocket.jupyter.org"


def encode_v1(channel: str, msg: dict[str, Any], buffers: list[bytes] = ()) -> bytes:
    """A kernel message in the v1 websocket format (offsets, channel, header, parent, metadata, content, buffers)."""
    parts = [json.dumps(msg[k]).encode() for k in ("header", "parent_header", "metadata", "content")] + list(buffers)
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(channel.encode()))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return head + channel.encode() + b"".join(parts)


def decode_v1(data: bytes) -> tuple[str, dict[str, Any], list[bytes]]:
    """(channel, message, buffers) of a v1 websocket message."""
    n = int.from_bytes(data[:8], "little")
    offsets = [int.from_bytes(data[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(n)] + [len(data)]
    chunks = [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    channel = chunks[0].decode()
    header, parent, metadata, content = (json.loads(c) if c else {} for c in chunks[1:5])
    return channel, {"header": header, "parent_header": parent, "metadata": metadata, "content": content}, chunks[5:]


class VisitorError(RuntimeError):
    """The page or the kernel did not behave as a browser expects."""


class Visitor:
    """One simulated page: ``await load()``, ``await connect()``, then ``await predict(png)``."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout = timeout
        self.session = uuid.uuid4().hex
        self.kernel_id: str | None = None
        self.ws: WebSocketClientConnection | None = None
        self.widgets: dict[str, dict[str, Any]] = {}  # comm id -> state
        self.received: list[str] = []  # every text part the kernel sent (for leak checks)
        self.status: int | None = None
        self.page = ""

    async def load(self) -> str:
        """GET the page; its kernel id (VisitorError if the server answered something else)."""
        try:
            # Tornado's client queues requests past max_clients (default 10) and times them out (599).
            client = AsyncHTTPClient(force_instance=True, max_clients=1000)
            resp = await client.fetch(self.base_url, request_timeout=self.timeout, connect_timeout=self.timeout)
        except HTTPClientError as exc:
            self.status = exc.code
            self.page = exc.response.body.decode(errors="replace") if exc.response else ""
            raise VisitorError(f"page load answered HTTP {exc.code}") from None
        self.status = resp.code
        self.page = resp.body.decode(errors="replace")
        match = re.search(r'"kernelId": "([0-9a-f-]+)"', self.page)
        if not match:
            raise VisitorError("no kernel id in the page")
        self.kernel_id = match.group(1)
        return self.kernel_id

    async def connect(self, subprotocol: str | None = V1) -> None:
        """Open the kernel websocket and fetch every widget's state, like the page's JavaScript."""
        url = f"{self.base_url.replace('http', 'ws', 1)}api/kernels/{self.kernel_id}/channels?session_id={self.session}"
        self.ws = await asyncio.wait_for(
            websocket_connect(url, subprotocols=[subprotocol] if subprotocol else None, max_message_size=16 << 20),
            self.timeout,
        )
        reply = await self.request("comm_info_request", {"target_name": "jupyter.widget"}, "comm_info_reply")
        comms = list(reply["content"]["comms"])
        for comm_id in comms:
            self.send_comm(comm_id, {"method": "request_state"})
        deadline = time.monotonic() + self.timeout
        while len(self.widgets) < len(comms):
            await self.next_message(deadline)

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def _msg(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        header = {
            "msg_id": uuid.uuid4().hex,
            "username": "visitor",
            "session": self.session,
            "date": datetime.now(timezone.utc).isoformat(),
            "msg_type": msg_type,
            "version": "5.3",
        }
        return {"header": header, "parent_header": {}, "metadata": {}, "content": content}

    def send(self, channel: str, msg: dict[str, Any], buffers: list[bytes] = ()) -> None:
        assert self.ws is not None
        self.ws.write_message(encode_v1(channel, msg, buffers), binary=True)

    def send_comm(self, comm_id: str, data: dict[str, Any], buffers: list[bytes] = ()) -> None:
        """A comm message to one widget (what a click or a canvas stroke sends)."""
        self.send("shell", self._msg("comm_msg", {"comm_id": comm_id, "data": data}), buffers)

    async def request(self, msg_type: str, content: dict[str, Any], reply_type: str) -> dict[str, Any]:
        msg = self._msg(msg_type, content)
        self.send("shell", msg)
        deadline = time.monotonic() + self.timeout
        while True:
            _channel, got = await self.next_message(deadline)
            if got["header"].get("msg_type") == reply_type and got["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return got

    async def next_message(self, deadline: float) -> tuple[str, dict[str, Any]]:
        """The next kernel message; widget states and updates are recorded on the way."""
        assert self.ws is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise VisitorError("timed out waiting for the kernel")
        data = await asyncio.wait_for(self.ws.read_message(), remaining)
        if data is None:
            raise VisitorError("the websocket closed")
        if isinstance(data, str):
            raise VisitorError("a text frame on the v1 protocol")
        channel, msg, _buffers = decode_v1(data)
        self.received.append(json.dumps(msg["content"]))
        if msg["header"].get("msg_type") == "comm_msg":
            body = msg["content"].get("data", {})
            if body.get("method") == "update":
                comm_id = msg["content"]["comm_id"]
                self.widgets.setdefault(comm_id, {}).update(body.get("state", {}))
        return channel, msg

    async def drain(self, seconds: float) -> None:
        """Keep reading for ``seconds`` (output the kernel flushes late, e.g. forwarded stderr)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                await self.next_message(deadline)
        except (VisitorError, asyncio.TimeoutError):
            pass

    def find(self, model: str, *, dom_class: str | None = None, description: str | None = None) -> str:
        """The comm id of the widget with this model name (and CSS class or description)."""
        for comm_id, state in self.widgets.items():
            if state.get("_model_name") != model:
                continue
            if dom_class and dom_class not in state.get("_dom_classes", []):
                continue
            if description and state.get("description") != description:
                continue
            return comm_id
        raise VisitorError(f"no {model} widget ({dom_class or description}) on the page")

    async def predict(self, png: bytes) -> tuple[dict[str, Any], float]:
        """Draw (send ``png`` as the canvas does), click Predict; the result's attributes and the round trip (ms)."""
        canvas = self.find("AnyModel")
        button = self.find("ButtonModel", description="Predict")
        result = self.find("HTMLModel", dom_class="dg-result-box")
        seq = _seq(self.widgets[result].get("value", ""))
        self.send_comm(canvas, {"method": "custom", "content": {"type": "image", "strokes": 1}}, [png])
        start = time.perf_counter()
        self.send_comm(button, {"method": "custom", "content": {"event": "click"}})
        deadline = time.monotonic() + self.timeout
        while _seq(self.widgets[result].get("value", "")) <= seq:
            await self.next_message(deadline)
        ms = 1000 * (time.perf_counter() - start)
        return _attrs(self.widgets[result]["value"]), ms


def _seq(value: str) -> int:
    match = re.search(r'data-seq="(\d+)"', value)
    return int(match.group(1)) if match else -1


def _attrs(value: str) -> dict[str, Any]:
    state = re.search(r'data-state="(\w+)"', value)
    digit = re.search(r'data-digit="(\d)"', value)
    return {"state": state.group(1) if state else None, "digit": int(digit.group(1)) if digit else None, "html": value}


def drawn_png(digit: int = 1, size: int = 280) -> bytes:
    """A canvas-like PNG with a simple stroke (what the browser sends after a pointer-up)."""
    import io

    from PIL import Image, ImageDraw

    im = Image.new("RGBA", (size, size), (0, 0, 0, 255))
    d = ImageDraw.Draw(im)
    if digit == 7:
        d.line([(80, 56), (200, 56), (124, 230)], fill="white", width=28)
    else:
        d.line([(146, 50), (134, 230)], fill="white", width=28)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()
