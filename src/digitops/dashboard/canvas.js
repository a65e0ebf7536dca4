// Drawing canvas for the digit dashboard (anywidget ESM).
// Pointer events cover mouse, pen and touch alike. The image goes to Python
// once per stroke, on pointer-up, encoded synchronously so that it is queued
// on the comm channel before any click that follows (a Predict click can
// never see a stale image).

function decodeDataUrl(url) {
  const bin = atob(url.slice(url.indexOf(",") + 1));
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}

function render({ model, el }) {
  const size = model.get("size");
  const canvas = document.createElement("canvas");
  canvas.width = size;
  canvas.height = size;
  canvas.className = "digitops-canvas";
  canvas.style.width = `${size}px`;
  canvas.style.height = `${size}px`;
  canvas.setAttribute("aria-label", "Drawing area: draw one digit");
  canvas.dataset.strokes = "0";
  el.classList.add("digitops-canvas-wrap");
  el.appendChild(canvas);

  const ctx = canvas.getContext("2d");
  let drawing = false;
  let last = null;
  let strokes = 0;

  function reset() {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, size, size);
    strokes = 0;
    canvas.dataset.strokes = "0";
  }

  function point(ev) {
    const r = canvas.getBoundingClientRect();
    return [((ev.clientX - r.left) * size) / r.width, ((ev.clientY - r.top) * size) / r.height];
  }

  function line(from, to) {
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineWidth = model.get("line_width");
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from[0], from[1]);
    ctx.lineTo(to[0], to[1]);
    ctx.stroke();
  }

  function down(ev) {
    if (ev.button !== undefined && ev.button > 0) return;
    ev.preventDefault();
    try {
      canvas.setPointerCapture(ev.pointerId); // keep the stroke when the pointer leaves the canvas
    } catch (_err) {
      // synthetic or already-released pointers cannot be captured; drawing still works
    }
    drawing = true;
    last = point(ev);
    line(last, last); // a tap leaves a dot
  }

  function move(ev) {
    if (!drawing) return;
    ev.preventDefault();
    const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
    for (const e of events.length ? events : [ev]) {
      const p = point(e);
      line(last, p);
      last = p;
    }
  }

  function up(ev) {
    if (!drawing) return;
    ev.preventDefault();
    drawing = false;
    last = null;
    strokes += 1;
    canvas.dataset.strokes = String(strokes);
    const png = decodeDataUrl(canvas.toDataURL("image/png"));
    model.send({ type: "image", strokes: strokes }, undefined, [png.buffer]);
  }

  function onMessage(msg) {
    if (msg && msg.type === "clear") reset();
  }

  reset();
  canvas.addEventListener("pointerdown", down);
  canvas.addEventListener("pointermove", move);
  canvas.addEventListener("pointerup", up);
  canvas.addEventListener("pointercancel", up);
  model.on("msg:custom", onMessage);
  canvas.dataset.ready = "1";
  model.send({ type: "ready" });

  return () => {
    model.off("msg:custom", onMessage);
  };
}

export default { render };
