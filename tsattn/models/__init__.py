"""Forecasters: LightningModules over the layers in :mod:`tsattn.layers`."""

from tsattn.models.base import Forecaster

__all__ = ["Forecaster"]
