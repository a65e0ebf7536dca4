"""Turn a drawing (canvas PNG or array) into the 28x28 image an MNIST model expects.

MNIST digits were made by cropping the ink, scaling its longest side to 20 px
with anti-aliasing (aspect ratio kept), and placing it in a 28x28 frame so
that its centre of mass sits in the middle. :func:`preprocess` does the same
to a canvas drawing, so the dashboard, the tests and the benchmark all feed
the model what it was trained on. Intensities stay on MNIST's 0-255 scale
(white ink on black); the models rescale inside the network.
"""

from __future__ import annotations

import io
from typing import Union

import numpy as np
from PIL import Image

SIZE = 28
BOX = 20
#: Pixels at or below this fraction of full intensity (after polarity fix) are background.
INK_THRESHOLD = 0.2
EMPTY_MESSAGE = "The canvas is empty: draw a digit (0-9) with thick strokes, then press Predict."
#: Larger images are refused before decoding: a 0.4 MB PNG can decode to gigabytes.
MAX_SIDE = 1024
MAX_BYTES = 2 * 1024 * 1024

ImageInput = Union[bytes, bytearray, memoryview, np.ndarray, Image.Image]


def to_grayscale(image: ImageInput) -> np.ndarray:
    """Decode PNG bytes, a PIL image or an array into float32 grayscale in [0, 255].

    Transparent pixels count as black, because an untouched HTML canvas is
    transparent and strokes are drawn opaque. Raises ValueError (a message
    fit for a visitor) for undecodable data, more than ``MAX_BYTES`` of it,
    more than ``MAX_SIDE`` pixels a side, NaN/inf pixels or an odd shape.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) > MAX_BYTES:
            raise ValueError(f"the image is {len(image) / 2**20:.1f} MB; at most {MAX_BYTES // 2**20} MB is accepted")
        try:
            image = Image.open(io.BytesIO(bytes(image)))  # reads the header only
        except Exception:  # PIL raises several types for bad data
            raise ValueError("could not decode the image (not a PNG, JPEG or other known format)") from None
        _check_side(image.width, image.height)
        try:
            image.load()
        except Exception:
            raise ValueError("could not decode the image (damaged or truncated data)") from None
    if isinstance(image, Image.Image):
        _check_side(image.width, image.height)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
            gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            return gray * (rgba[..., 3] / 255.0)
        return np.asarray(image.convert("L"), dtype=np.float32)
    shape = np.shape(image)
    if len(shape) not in (2, 3) or any(side > MAX_SIDE for side in shape[:2]):
        raise ValueError(f"expected a 2-D grayscale or RGB(A) image of at most {MAX_SIDE}x{MAX_SIDE}, got shape {shape}")
    try:
        arr = np.asarray(image, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError("expected an image of numbers") from None
    if not np.isfinite(arr).all():
        raise ValueError("the image has NaN or infinite pixels")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        gray = arr[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        arr = gray * (arr[..., 3] / 255.0) if arr.shape[-1] == 4 else gray
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a 2-D grayscale or RGB(A) image, got shape {np.shape(image)}")
    if arr.max(initial=0.0) <= 1.0 and np.issubdtype(np.asarray(image).dtype, np.floating):
        arr = arr * 255.0  # float images in [0, 1]
    return np.clip(arr, 0.0, 255.0)


def _check_side(width: int, height: int) -> None:
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ValueError(f"the image is {width}x{height} pixels; at most {MAX_SIDE}x{MAX_SIDE} is accepted")


def _ink_first(gray: np.ndarray) -> np.ndarray:
    # Dark ink on light paper (a photo, a scan, a white canvas) is flipped to
    # MNIST's light-on-dark; the border tells which is the background.
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return 255.0 - gray if np.median(border) > 127.5 else gray


def _centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    total = float(img.sum())
    rows, cols = np.indices(img.shape)
    return float((rows * img).sum() / total), float((cols * img).sum() / total)


def preprocess(image: ImageInput) -> np.ndarray | None:
    """The 28x28 uint8 MNIST-like image for ``image``, or None when it holds no ink.

    Steps: grayscale, ink made light on dark, crop to the ink, scale the
    longest side to 20 px keeping the aspect ratio, stretch to full contrast,
    paste into 28x28 so the centre of mass is at the centre.
    """
    gray = _ink_first(to_grayscale(image))
    peak = float(gray.max(initial=0.0))
    if peak < INK_THRESHOLD * 255.0:
        return None
    ink = gray > INK_THRESHOLD * peak
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # Zero the faint haze below the threshold so it cannot shift the centre of mass.
    crop = np.where(crop > INK_THRESHOLD * peak, crop, 0.0)

    h, w = crop.shape
    scale = BOX / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    pil = Image.fromarray(crop.astype(np.float32))
    # Pillow filters over the whole source footprint when shrinking, which is the anti-aliasing MNIST had.
    small = np.asarray(pil.resize((new_w, new_h), Image.Resampling.LANCZOS), dtype=np.float32)
    small = np.clip(small, 0.0, None)
    top = float(small.max(initial=0.0))
    if top <= 0.0:
        return None
    small = small * (255.0 / top)

    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    cy, cx = _centre_of_mass(small)
    # Put the centre of mass at (13.5, 13.5) without pushing ink off the frame.
    y0 = int(np.clip(round(SIZE / 2 - 0.5 - cy), 0, SIZE - new_h))
    x0 = int(np.clip(round(SIZE / 2 - 0.5 - cx), 0, SIZE - new_w))
    out[y0 : y0 + new_h, x0 : x0 + new_w] = small
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_png(image: np.ndarray, scale: int = 1) -> bytes:
    """PNG bytes of a uint8 grayscale image, optionally enlarged with hard pixel edges."""
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()
