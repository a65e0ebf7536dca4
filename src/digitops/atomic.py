"""Write a file so that readers see the old content or the new, never half of it.

The idiom: write a temporary file beside the target (same folder, so the rename
stays on one file system; a per-process name, since the runner and its kernel
may write the same file), then ``os.replace`` it onto the target. A full disk, a
kill or an exception leaves the target untouched and removes the temporary.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, tmp: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it becomes ``path``.

    ``tmp`` names the temporary (default ``.<name>.<pid>.partial``; Keras needs a
    ``.keras`` suffix, for one). It is removed whatever happens.
    """
    target = Path(path)
    partial = Path(tmp) if tmp is not None else target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        yield partial
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Replace ``path``'s content with ``text`` atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path``'s content with ``data`` atomically."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, content: Any, **dumps: Any) -> None:
    """Replace ``path`` with ``content`` as JSON (``dumps``: :func:`json.dumps` options) atomically."""
    write_text(path, json.dumps(content, **dumps))


def copy(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy ``src`` onto ``dest`` atomically."""
    import shutil

    with replacing(dest) as tmp:
        shutil.copyfile(src, tmp)
