"""Forecasters: LightningModules over the layers in :mod:`tsattn.layers`."""

from tsattn.models.base import Forecaster
from tsattn.models.baselines import EMASmoother, Linear, Naive, SeasonalNaive
from tsattn.models.gam import GAMForecaster
from tsattn.models.hrnet import HRNetForecaster

__all__ = [
    "EMASmoother",
    "Forecaster",
    "GAMForecaster",
    "HRNetForecaster",
    "Linear",
    "Naive",
    "SeasonalNaive",
]
