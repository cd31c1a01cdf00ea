"""StepReadout: the zero-initialised head that maps per-step features to a forecast correction."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["StepReadout"]


class StepReadout(nn.Module):
    """Per-step features (B, L, d) -> correction (B, H, C, Q): a linear map over time, then over features.

    The feature map is zero-initialised, so a forecaster that adds the correction to a skip forecast (the
    DLinear skip of `GAMForecaster` and `HRNetForecaster`) starts exactly at that skip.
    """

    def __init__(self, lookback: int, horizon: int, d_model: int, n_channels: int, n_outputs: int) -> None:
        super().__init__()
        self.horizon, self.n_channels, self.n_outputs = horizon, n_channels, n_outputs
        self.time_head = nn.Linear(lookback, horizon)
        self.out = nn.Linear(d_model, n_channels * n_outputs)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor) -> Tensor:
        h = self.time_head(h.transpose(1, 2)).transpose(1, 2)  # (B, d, L) -> (B, d, H) -> (B, H, d)
        return self.out(h).view(h.shape[0], self.horizon, self.n_channels, self.n_outputs)
