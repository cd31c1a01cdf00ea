"""Atomic file writes: write a temporary file beside the target, then ``os.replace`` it onto the target.

Readers never see half a file, and a failed write leaves the target as it was (and no temporary file behind).
``write_json`` writes strict JSON that way: a non-finite number (a diverged fit) becomes null, never NaN.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "finite_or_none", "write_json"]


@contextmanager
def atomic_path(path: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside *path* to write to; on leaving the block without an error it replaces *path*.

    The folder of *path* is created. An error inside the block removes the temporary file and leaves *path* as it
    was. ``replace=False``: a file that exists at *path* by then (one that appeared meanwhile) is kept, with a
    FileExistsError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if not replace and path.exists():
            raise FileExistsError(f"{path} exists and was kept; allow replacing it (--overwrite)")
        os.replace(tmp, path)
    except OSError as err:
        if err.filename not in (str(tmp), tmp) or err.errno is None:
            raise
        raise type(err)(err.errno, err.strerror, str(path)) from None  # the file asked for, not the temporary one
    finally:
        if tmp.exists():
            tmp.unlink()


def finite_or_none(value: object) -> object:
    """*value* with every non-finite float, in dicts and lists too, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def write_json(path: str | os.PathLike, payload: object, *, replace: bool = True) -> None:
    """Write *payload* to *path* atomically as strict JSON (non-finite numbers as null).

    ``replace=False``: a file that exists at *path* is kept, with a FileExistsError (see `atomic_path`).
    """
    with atomic_path(path, replace=replace) as tmp:
        tmp.write_text(json.dumps(finite_or_none(payload), indent=2, allow_nan=False) + "\n")
