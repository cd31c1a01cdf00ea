"""Per-series scalers, fit with scikit-learn and kept as plain arrays (``original = scaled * scale + loc``).

Only the fitted ``loc`` / ``scale`` arrays are kept, never the scikit-learn objects, so checkpoints hold plain
numbers and load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import RobustScaler, StandardScaler

__all__ = ["SCALERS", "fit_scaler"]

SCALERS = ("standard", "robust", "none")


def fit_scaler(values: np.ndarray, kind: str = "standard") -> tuple[np.ndarray, np.ndarray]:
    """Fit on ``values`` (T, C); return ``loc`` (C,) and ``scale`` (C,) float64.

    ``standard``: mean and population std (StandardScaler); ``robust``: median and inter-quartile range
    (RobustScaler); ``none``: 0 and 1. Constant channels get scale 1 (scikit-learn's rule), never 0.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be (T, C), got shape {values.shape}")
    c = values.shape[1]
    if kind == "none":
        return np.zeros(c), np.ones(c)
    if len(values) == 0:
        raise ValueError("cannot fit a scaler on zero rows")
    if kind == "standard":
        sc = StandardScaler().fit(values)
        return np.asarray(sc.mean_, dtype=np.float64), np.asarray(sc.scale_, dtype=np.float64)
    if kind == "robust":
        sc = RobustScaler().fit(values)
        return np.asarray(sc.center_, dtype=np.float64), np.asarray(sc.scale_, dtype=np.float64)
    raise ValueError(f"scaler={kind!r} is not known; use one of {', '.join(SCALERS)}.")
