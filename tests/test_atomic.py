"""atomic_path: the target is replaced only when the write finishes; a failed write leaves it and no temp file."""

from __future__ import annotations

import json

import pytest

from tsattn.atomic import atomic_path, write_json


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
    folder = tmp_path / "metrics.json"  # a folder where the file should go: the error names the file, not the temp
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as info:
        write_json(folder, {"a": 1})
    assert info.value.filename == str(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "sub"]


def test_write_json_is_strict_and_refuses_to_replace_when_asked(tmp_path) -> None:
    target = tmp_path / "m.json"
    write_json(target, {"test": {"mse": float("nan"), "n": [1.0, float("inf")], "k": (2, "a")}})
    text = target.read_text()
    expected = {"test": {"mse": None, "n": [1.0, None], "k": [2, "a"]}}
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == expected
    with pytest.raises(FileExistsError, match="m.json exists"):
        write_json(target, [], replace=False)
    assert target.read_text() == text and sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
    write_json(target, [])
    assert json.loads(target.read_text()) == []
