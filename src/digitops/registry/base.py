"""The model registry interface (embedded SQLite and Comet backends).

A registered model is a named series of versions. Each version points at the
run that produced it and carries the SHA256 of its ``.keras`` file, so a
download can always be verified. At most one version is ``production``.
"""

from __future__ import annotations

import abc
import hashlib
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from digitops.errors import RegistryError, UsageError  # RegistryError re-exported

from digitops.registry.versions import ARCHIVED, NONE, PRODUCTION, STAGING, STATUSES  # noqa: F401  re-exported


@dataclass
class ModelVersion:
    """One registered version of a model."""

    name: str
    version: str  # semantic version assigned by the registry, e.g. "1.2.0"
    run_id: str
    sha256: str
    status: str = STAGING
    metrics: dict[str, float] = field(default_factory=dict)
    created_by: str = ""
    created_at: str = ""
    #: where the registry keeps the file (local path or backend URI)
    uri: str = ""
    #: a page about this version or its run, when the backend has one
    url: str | None = None
    tags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Registry(abc.ABC):
    """Versions, statuses and files of registered models."""

    @abc.abstractmethod
    def register(
        self,
        name: str,
        model_path: str | os.PathLike,
        run_id: str,
        *,
        metrics: dict[str, float] | None = None,
        status: str = STAGING,
        bump: str = "minor",
    ) -> ModelVersion:
        """Store ``model_path`` as the next version (``bump``: major/minor/patch); never collides."""

    @abc.abstractmethod
    def list_versions(self, name: str) -> list[ModelVersion]:
        """All versions of ``name``, oldest first."""

    @abc.abstractmethod
    def get_version(self, name: str, version: str) -> ModelVersion:
        """One version, or :class:`RegistryError`."""

    @staticmethod
    def verify(version: ModelVersion, path: Path, what: str) -> None:
        """Raise :class:`RegistryError` unless ``path`` (``what``, for the message) has the SHA256 registered."""
        got = sha256_file(path)
        if got != version.sha256:
            raise RegistryError(
                f"{version.name} {version.version}: {what} has sha256 {got}, registered sha256 is {version.sha256}; "
                "refusing a corrupted model"
            )

    def resolve(self, name: str, version: str | None = None, status: str | None = None) -> ModelVersion:
        """``version`` if given, else the newest version with ``status`` (production by default).

        Raises :class:`~digitops.errors.UsageError` for both at once and
        :class:`RegistryError` when no version has the status.
        """
        if version and status:
            raise UsageError("give a version or a status, not both")
        if version:
            return self.get_version(name, version)
        found = self.get_by_status(name, status or PRODUCTION)
        if found is None:
            raise RegistryError(f"{name} has no version with status {status or PRODUCTION!r}")
        return found

    @abc.abstractmethod
    def get_by_status(self, name: str, status: str = PRODUCTION) -> ModelVersion | None:
        """The newest version with ``status`` (the only one, for production), or None."""

    def production_reference(self, name: str) -> ModelVersion | None:
        """The production version a gate compares against, read from this registry itself.

        Unlike :meth:`get_by_status`, a backend that would answer from a stand-in (the
        embedded registry while Comet is away) raises :class:`RegistryError` instead: a
        gate must not judge against what it could not see.
        """
        return self.get_by_status(name, PRODUCTION)

    @abc.abstractmethod
    def set_status(self, name: str, version: str, status: str) -> ModelVersion:
        """Set a version's status; setting production archives the previous production."""

    def promote(self, name: str, version: str) -> ModelVersion:
        """Make ``version`` the production version."""
        return self.set_status(name, version, PRODUCTION)

    @abc.abstractmethod
    def rollback(self, name: str) -> ModelVersion:
        """Make the production version before the current one production again."""

    @abc.abstractmethod
    def download(
        self, name: str, dest: str | os.PathLike, *, version: str | None = None, status: str | None = None
    ) -> Path:
        """Copy a version's file to ``dest`` (a folder or a ``.keras`` path), checksum verified."""


def looks_like_keras(path: Path) -> bool:
    """Whether ``path`` has the shape of a Keras 3 ``.keras`` file."""
    # A cheap structural check (no Keras import): Keras 3 writes a zip holding config.json.
    try:
        with zipfile.ZipFile(path) as z:
            return "config.json" in z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
