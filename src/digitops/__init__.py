"""digitops: notebook-first MLOps for a handwritten-digit recogniser."""

__version__ = "0.1.0"
