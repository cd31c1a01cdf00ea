"""Atomic file writes: write a temporary file beside the target, then ``os.replace`` it onto the target.

Readers never see half a file, and a failed write leaves the target as it was (and no temporary file behind).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside *path* to write to; on leaving the block without an error it replaces *path*.

    The folder of *path* is created. An error inside the block removes the temporary file and leaves *path* as it
    was; raising inside the block is also how a caller refuses to replace (e.g. an output that appeared meanwhile).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
