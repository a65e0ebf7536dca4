"""One atomic-write helper: the target holds the old content or the new, never half, and no temporary is left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from digitops import atomic


def test_a_failed_write_leaves_the_old_content_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(OSError, match="disk full"):
        with atomic.replacing(target) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise OSError("disk full")
    assert target.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_writes_replace_the_target_and_name_the_temporary_per_process(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    with atomic.replacing(target) as tmp:
        assert tmp.parent == tmp_path and str(os.getpid()) in tmp.name and not tmp.name.endswith(".json")
        tmp.write_text("{}", encoding="utf-8")
    atomic.write_json(target, {"a": 1}, sort_keys=True)
    assert target.read_text(encoding="utf-8") == '{"a": 1}'
    atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic.copy(tmp_path / "b.bin", tmp_path / "c.bin")
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "c.bin", "state.json"]
