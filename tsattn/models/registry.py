"""Finding forecaster classes by name, safely.

One lookup for the CLI, batch forecasting and checkpoint loading. A class named inside a checkpoint is only
looked up among tsattn's own, already imported forecasters; nothing is imported because a file names it.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from typing import Any

from tsattn.models.base import Forecaster

__all__ = ["checkpoint_class", "forecaster_class", "forecaster_classes"]

log = logging.getLogger(__name__)


def forecaster_classes() -> dict[str, type[Forecaster]]:
    """Every concrete forecaster, by class name, after importing the modules of :mod:`tsattn.models`."""
    import tsattn.models as models

    for info in pkgutil.iter_modules(models.__path__, models.__name__ + "."):
        try:
            importlib.import_module(info.name)
        except Exception as err:  # a broken model module must not hide the others
            log.warning("could not import %s: %s", info.name, err)
    found: dict[str, type[Forecaster]] = {}
    stack = list(Forecaster.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if not cls.__name__.startswith("_") and not inspect.isabstract(cls):
            found.setdefault(cls.__name__, cls)
    return found


def forecaster_class(name: str) -> type[Forecaster]:
    """A forecaster by short name (``Linear``) or import path the user typed (``mypkg.models.MyForecaster``).

    Raises ValueError naming the known forecasters when there is no such class.
    """
    known = forecaster_classes()
    if name in known:
        return known[name]
    if "." in name:
        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            cls = None
        if isinstance(cls, type) and issubclass(cls, Forecaster):
            return cls
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(known))}")


def checkpoint_class(hparams: dict[str, Any]) -> type[Forecaster] | None:
    """The class a checkpoint's ``_class_path`` names, among imported tsattn forecasters; None when it names none.

    Raises ValueError when it names a class outside tsattn's own (never imported on a file's word).
    """
    path = hparams.get("_class_path")
    if not isinstance(path, str):
        return None
    cls = forecaster_classes().get(path.rpartition(".")[2])
    if cls is not None and (path.startswith("tsattn.") or path == f"{cls.__module__}.{cls.__qualname__}"):
        return cls
    raise ValueError(
        f"the checkpoint names the model class {path!r}, which is not an imported tsattn forecaster; "
        "tsattn never imports a module named by a checkpoint"
    )
