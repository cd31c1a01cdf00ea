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

__all__ = ["OBJECT_HPARAMS", "checkpoint_class", "forecaster_class", "forecaster_classes", "identify_class", "init_params"]

log = logging.getLogger(__name__)

OBJECT_HPARAMS = ("loss", "optimizer", "lr_scheduler")  # objects, not sizes: not needed to rebuild a model to predict


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


def init_params(cls: type) -> set[str]:
    """The names of the arguments ``cls(...)`` takes, its bases' too where a constructor passes ``**kwargs`` on."""
    params = set()
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        sig = inspect.signature(klass.__init__)
        params |= {n for n, p in sig.parameters.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            break  # a constructor without **kwargs takes exactly its own arguments
    return params


def identify_class(hparams: dict[str, Any], state_dict: dict[str, Any]) -> type[Forecaster]:
    """The forecaster of a checkpoint that names no class (saved by a plain ``Trainer``): the one whose constructor
    takes exactly the stored hyperparameters and whose state dict has the stored keys and shapes.

    Raises ValueError when none or several fit.
    """
    known = forecaster_classes()
    keys = {k for k in hparams if not k.startswith("_")} - set(OBJECT_HPARAMS)
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    matches: list[tuple[int, str, type[Forecaster]]] = []
    for name, cls in sorted(known.items()):
        params = init_params(cls)
        if not keys <= params:
            continue
        try:
            candidate = cls(**{k: hparams[k] for k in keys})
        except Exception:  # probing: a class that cannot be built from these arguments is not the one
            continue
        if {k: tuple(v.shape) for k, v in candidate.state_dict().items()} == shapes:
            matches.append((len(params - keys - set(OBJECT_HPARAMS)), name, cls))
    if not matches:
        raise ValueError(
            f"the checkpoint names no model class and matches none of the known forecasters ({', '.join(sorted(known))})"
        )
    matches.sort(key=lambda m: m[0])
    best = [m for m in matches if m[0] == matches[0][0]]
    if len(best) > 1:
        raise ValueError(f"the checkpoint names no model class and fits {', '.join(m[1] for m in best)}")
    log.info("checkpoint without a class path: identified as %s", best[0][1])
    return best[0][2]
