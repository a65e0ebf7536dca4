"""Canvas drawing -> 28x28 MNIST-like image (digitops.preprocess)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitops.preprocess import BOX, EMPTY_MESSAGE, SIZE, preprocess, to_grayscale, to_png


def canvas(strokes, size: int = 280, width: int = 28, ink: str = "white", paper: str = "black") -> Image.Image:
    """A canvas like the dashboard's: thick round strokes through pixel points."""
    im = Image.new("RGB", (size, size), paper)
    d = ImageDraw.Draw(im)
    r = width / 2
    for pts in strokes:
        d.line(pts, fill=ink, width=width)
        for x, y in pts:
            d.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    return im


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def centre_of_mass(img: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(img.shape)
    total = img.astype(float).sum()
    return float((rows * img).sum() / total), float((cols * img).sum() / total)


def ink_box(img: np.ndarray, level: int = 1) -> tuple[int, int]:
    """Height and width of the pixels at or above ``level``."""
    ys, xs = np.nonzero(img >= level)
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


SEVEN = [[(60, 40), (170, 40), (100, 190)]]


def test_output_is_28x28_uint8_full_contrast():
    out = preprocess(png_bytes(canvas(SEVEN)))
    assert out is not None
    assert out.shape == (SIZE, SIZE) and out.dtype == np.uint8
    assert out.max() == 255
    # Centring by centre of mass moves the 20-pixel box but never cuts ink off.
    assert max(ink_box(out, level=64)) == BOX


def test_centred_by_centre_of_mass_wherever_drawn():
    # The same shape in a corner, drawn small, and in the middle, drawn big.
    corner = canvas([[(10, 10), (60, 10), (30, 80)]], width=10)
    middle = canvas([[(40, 40), (240, 40), (120, 260)]], width=40, size=300)
    for im in (corner, middle, canvas(SEVEN)):
        out = preprocess(png_bytes(im))
        cy, cx = centre_of_mass(out)
        assert abs(cy - 13.5) <= 1.0 and abs(cx - 13.5) <= 1.0, (cy, cx)
    a, b = preprocess(png_bytes(corner)), preprocess(png_bytes(middle))
    # Scale and position do not matter: the two results are nearly the same picture.
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 25


def test_longest_side_scaled_to_20_keeping_aspect():
    tall = preprocess(png_bytes(canvas([[(140, 30), (140, 250)]], width=20)))  # a "1"
    h, w = ink_box(tall, level=64)
    assert h == BOX and w <= 4
    wide = preprocess(png_bytes(canvas([[(30, 140), (250, 140)]], width=20)))  # a dash
    h, w = ink_box(wide, level=64)
    assert w == BOX and h <= 4
    box = preprocess(png_bytes(canvas([[(60, 100), (220, 100), (220, 180), (60, 180), (60, 100)]], width=16)))
    h, w = ink_box(box, level=64)
    assert w == BOX and 9 <= h <= 12  # 160 x 80 (+ stroke) keeps roughly 2:1


def test_empty_canvas_gives_none():
    assert preprocess(png_bytes(canvas([]))) is None
    assert preprocess(np.zeros((280, 280), np.uint8)) is None
    # A transparent (never painted) canvas is empty too.
    assert preprocess(png_bytes(Image.new("RGBA", (100, 100), (0, 0, 0, 0)))) is None
    assert "draw a digit" in EMPTY_MESSAGE


def test_all_white_input_is_blank_paper_not_a_digit():
    assert preprocess(np.full((280, 280), 255, np.uint8)) is None
    assert preprocess(png_bytes(Image.new("RGB", (200, 200), "white"))) is None


def test_dark_ink_on_white_paper_matches_white_on_black():
    light = preprocess(png_bytes(canvas(SEVEN)))
    dark = preprocess(png_bytes(canvas(SEVEN, ink="black", paper="white")))
    assert dark is not None
    assert np.abs(light.astype(int) - dark.astype(int)).max() <= 2


def test_inputs_bytes_array_and_pil_agree():
    im = canvas(SEVEN)
    from_png = preprocess(png_bytes(im))
    assert np.array_equal(from_png, preprocess(im))
    assert np.array_equal(from_png, preprocess(np.asarray(im)))
    assert np.array_equal(from_png, preprocess(np.asarray(im.convert("L"))))
    rgba = np.asarray(im.convert("RGBA"))
    assert np.array_equal(from_png, preprocess(rgba))
    # Float images in [0, 1] are understood as such.
    assert np.array_equal(from_png, preprocess(np.asarray(im.convert("L"), dtype=np.float32) / 255.0))


def test_looks_like_mnist_to_a_model_statistic():
    """Ink coverage and stroke intensity land in MNIST's range (mean ~ 33, ~19 % of pixels lit)."""
    out = preprocess(png_bytes(canvas(SEVEN))).astype(float)
    assert 10 < out.mean() < 60
    assert 0.08 < (out > 0).mean() < 0.35


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="could not decode"):
        preprocess(b"not a png")
    with pytest.raises(ValueError, match="2-D"):
        to_grayscale(np.zeros((2, 2, 2, 2)))


def test_to_png_round_trip_and_scale():
    img = preprocess(png_bytes(canvas(SEVEN)))
    back = np.asarray(Image.open(io.BytesIO(to_png(img))))
    assert np.array_equal(back, img)
    big = Image.open(io.BytesIO(to_png(img, scale=5)))
    assert big.size == (140, 140)


def test_huge_images_are_refused_before_decoding(monkeypatch):
    """A 0.4 MB PNG of 10000x10000 pixels would decode to 400 MB (and cost a 3 GB kernel)."""
    big = Image.new("RGBA", (10000, 10000))
    data = io.BytesIO()
    big.save(data, "PNG")
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size))
    with pytest.raises(ValueError, match=r"10000x10000 pixels; at most 1024x1024"):
        preprocess(data.getvalue())
    assert decoded == []  # refused from the header alone
    with pytest.raises(ValueError, match="at most 2 MB"):
        preprocess(b"\x89PNG\r\n\x1a\n" + bytes(3 * 2**20))
    with pytest.raises(ValueError, match="at most 1024x1024"):
        preprocess(Image.new("L", (2000, 10)))
    with pytest.raises(ValueError, match="at most 1024x1024"):
        preprocess(np.zeros((5000, 28), np.uint8))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_pixels_are_refused(bad):
    img = np.zeros((28, 28), np.float32)
    img[10:18, 12:16] = 200.0
    img[3, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        preprocess(img)


@pytest.mark.parametrize("shape", [(0, 0), (28,), (28, 28, 2), (1, 28, 28, 1), ()])
def test_odd_shapes_are_refused(shape):
    with pytest.raises(ValueError, match="2-D|at most"):
        preprocess(np.ones(shape, np.float32))
    with pytest.raises(ValueError, match="numbers"):
        preprocess(np.array([["a", "b"], ["c", "d"]]))
