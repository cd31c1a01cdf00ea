"""atomic_path: the target is replaced only when the write finishes; a failed write leaves it and no temp file."""

from __future__ import annotations

import pytest

from tsattn.atomic import atomic_path


def test_replaces_on_success_and_keeps_the_target_on_error(tmp_path) -> None:
    target = tmp_path / "sub" / "out.csv"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("first")
        assert not target.exists()  # nothing is visible before the block ends
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("write failed")
    assert target.read_text() == "first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.csv"]
