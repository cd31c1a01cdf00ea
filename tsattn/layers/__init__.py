"""Neural layers of tsattn: pure PyTorch modules on (batch, time, channels) tensors (no Lightning, no pandas)."""

from tsattn.layers.block import EMAAttentionBlock
from tsattn.layers.ema import EMA, EMAState, ema, linear_scan
from tsattn.layers.ema_attention import AttentionState, EMAHistoryAttention, ema_history_attention
from tsattn.layers.gam import GAM1d
from tsattn.layers.hrnet import HRNet1d

__all__ = [
    "EMA",
    "AttentionState",
    "EMAAttentionBlock",
    "EMAHistoryAttention",
    "EMAState",
    "GAM1d",
    "HRNet1d",
    "ema",
    "ema_history_attention",
    "linear_scan",
]
