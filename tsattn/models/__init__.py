"""Forecasters: LightningModules over the layers in :mod:`tsattn.layers`."""

from tsattn.models.base import Forecaster
from tsattn.models.baselines import EMASmoother, Linear, Naive, SeasonalNaive
from tsattn.models.best_weights import BestWeights
from tsattn.models.ema_attention import EMAAttentionForecaster
from tsattn.models.gam import GAMForecaster
from tsattn.models.hrnet import HRNetForecaster
from tsattn.models.phase_ridge import PhaseRidge
from tsattn.models.ridge import Ridge, RidgeCycle
from tsattn.models.test_errors import TestErrors

__all__ = [
    "BestWeights",
    "EMAAttentionForecaster",
    "EMASmoother",
    "Forecaster",
    "GAMForecaster",
    "HRNetForecaster",
    "Linear",
    "Naive",
    "PhaseRidge",
    "Ridge",
    "RidgeCycle",
    "SeasonalNaive",
    "TestErrors",
]
