"""Find, download, verify, cache and load the model the dashboard serves.

The production version comes from the active registry (embedded SQLite, Comet,
or MLflow / GitLab's model registry with the token from the environment) unless
``$DIGITOPS_MODEL_VERSION`` pins one. Files are cached by
version under ``<home>/model-cache/<name>/<version>/model.keras`` (or
``$DIGITOPS_MODEL_CACHE``), downloaded at most once (a file lock guards
concurrent kernels and replicas), and their SHA256 is checked against the
registry's record every time they are loaded, so a corrupted or swapped file
is refused rather than served.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digitops import config
from digitops.errors import ChecksumError  # re-exported
from digitops.registry.base import sha256_file

if TYPE_CHECKING:
    from digitops.registry.base import ModelVersion, Registry

PIN_ENV = "DIGITOPS_MODEL_VERSION"
CACHE_ENV = "DIGITOPS_MODEL_CACHE"
MODEL_FILE = "model.keras"
#: The registry record of a cached version, so a pinned version can be served without the registry.
RECORD_FILE = "version.json"


class NoModelError(Exception):
    """No version to serve: nothing registered as production yet, or a pinned version is missing."""


@dataclass
class LoadedModel:
    """A verified model ready for inference, with the registry record it came from."""

    version: ModelVersion
    path: Path
    model: Any  # keras.Model; typed loosely so importing this module stays cheap


def cache_root() -> Path:
    """Where downloaded models are cached (``$DIGITOPS_MODEL_CACHE`` or ``<home>/model-cache``)."""
    env = config.env(CACHE_ENV)
    return Path(env) if env else config.home() / "model-cache"


def cache_path(name: str, version: str) -> Path:
    """The cached file of one model version."""
    return cache_root() / name / version / MODEL_FILE


def _record_path(name: str, version: str) -> Path:
    return cache_root() / name / version / RECORD_FILE


def cached_record(name: str, version: str) -> ModelVersion | None:
    """The registry record saved beside a cached file, or None when that version is not cached."""
    from digitops.registry.base import ModelVersion

    path = _record_path(name, version)
    if not path.is_file():
        return None
    try:
        return ModelVersion(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise ChecksumError(f"unreadable model record {path}: {exc}; delete {path.parent} to fetch it again") from None


def no_model_help(name: str) -> str:
    """Plain-text steps to get a first production model, shown instead of a traceback."""
    return (
        f"No production version of the model '{name}' is registered yet.\n"
        "Train, evaluate and register one, then reload this page:\n"
        "  digitops pipeline --profile quick --promote   # train, evaluate, register as production\n"
        "  digitops registry promote <version>           # or promote a version already registered\n"
        f"Or pin a registered version with {PIN_ENV}=<version>."
    )


def resolve(registry: Registry | None = None, name: str | None = None, pinned: str | None = None) -> ModelVersion:
    """The version to serve: ``pinned`` (default ``$DIGITOPS_MODEL_VERSION``), else production.

    A pinned version already in the cache is served from its saved record
    without asking the registry (an image with the model baked in needs no
    registry access). Raises :class:`NoModelError` with instructions when
    there is nothing to serve.
    """
    from digitops.registry import RegistryError, get_registry

    name = name or config.model_name()
    pinned = pinned if pinned is not None else (config.env(PIN_ENV) or None)
    if pinned:
        record = cached_record(name, pinned)
        if record is not None:
            return record
    registry = registry if registry is not None else get_registry()
    if pinned:
        try:
            return registry.get_version(name, pinned)
        except RegistryError as exc:
            raise NoModelError(
                f"{PIN_ENV}={pinned} but the registry has no version {pinned} of '{name}': {exc}"
            ) from None
    version = registry.get_by_status(name, "production")  # None for a model never registered
    if version is None:
        raise NoModelError(no_model_help(name))
    return version


def verify(path: Path, version: ModelVersion) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the SHA256 the registry recorded."""
    actual = sha256_file(path)
    if actual != version.sha256:
        raise ChecksumError(
            f"refusing to load {path}: its SHA256 is {actual[:12]}... but the registry records "
            f"{version.sha256[:12]}... for {version.name} {version.version}. The cached file is "
            f"corrupt or was replaced; delete {path.parent} to download it again."
        )


def fetch(version: ModelVersion, registry: Registry | None = None) -> Path:
    """The verified local file of ``version``, downloaded into the cache on first use."""
    from filelock import FileLock

    from digitops.registry import get_registry

    target = cache_path(version.name, version.version)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / ".lock"), timeout=600):
        if not target.exists():
            registry = registry if registry is not None else get_registry()
            # Download beside the target and rename, so a crash never leaves a partial file behind.
            tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
            try:
                got = registry.download(version.name, tmp, version=version.version)
                verify(Path(got), version)
                record = tmp / RECORD_FILE
                record.write_text(json.dumps(version.to_dict(), indent=1), encoding="utf-8")
                os.replace(record, _record_path(version.name, version.version))
                os.replace(got, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    verify(target, version)
    return target


_LOADED: dict[tuple[str, str, str], LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


def load_file(version: ModelVersion, path: Path) -> LoadedModel:
    """Load a fetched file (verified again) with Keras; each version is loaded once per process."""
    from digitops.quiet import native_stderr_silenced

    with native_stderr_silenced():  # TensorFlow's C++ start-up lines stay out of the server's log
        import keras

    key = (version.name, version.version, version.sha256)
    with _LOAD_LOCK:
        if key not in _LOADED:
            verify(path, version)
            # Serving needs no optimizer: skip compiling and restoring its state.
            keras_model = keras.models.load_model(path, compile=False)
            # One warm-up call builds the inference graph now rather than on a visitor's first click.
            import numpy as np

            keras_model.predict_on_batch(np.zeros((1, 28, 28, 1), dtype=np.float32))
            _LOADED[key] = LoadedModel(version=version, path=path, model=keras_model)
        return _LOADED[key]


def load(registry: Registry | None = None, name: str | None = None, pinned: str | None = None) -> LoadedModel:
    """Resolve, fetch, verify and load the model to serve."""
    version = resolve(registry, name, pinned)
    return load_file(version, fetch(version, registry))


def predict(loaded: LoadedModel | Any, image: Any) -> Any:
    """Probabilities (10,) for one preprocessed 28x28 image, via ``predict_on_batch`` (no ``predict``)."""
    import numpy as np

    from digitops.dashboard.modelserver import RemoteModel

    if isinstance(loaded, RemoteModel):
        return loaded.predict(image)  # the server's model process; no TensorFlow in this process
    from digitops import model as model_lib

    keras_model = loaded.model if isinstance(loaded, LoadedModel) else loaded
    return np.asarray(keras_model.predict_on_batch(model_lib.as_input(image)))[0]
