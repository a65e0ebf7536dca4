"""digitops: notebook-first MLOps for a handwritten-digit recogniser."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("digitops")  # one source of truth: pyproject.toml, through the installed metadata
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
