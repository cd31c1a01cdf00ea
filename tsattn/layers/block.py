"""EMAAttentionBlock: a pre-norm residual block of EMA history attention and a feed-forward network.

The attention is the EMA history attention of this package (exponential smoothing as a recency prior over a
sliding window, see `tsattn.layers.ema_attention`), arranged like a pre-norm Transformer layer (Xiong et al. 2020,
"On Layer Normalization in the Transformer Architecture"), so the forecasters can stack it.
"""

from __future__ import annotations

from torch import Tensor, nn

from tsattn.layers.ema_attention import AttentionState, EMAHistoryAttention

__all__ = ["EMAAttentionBlock"]


class EMAAttentionBlock(nn.Module):
    """Pre-norm residual block: ``x + drop(attn(n) − n)`` with ``n = norm(x)``, then ``x + drop(ff(norm(x)))``.

    The attention already fuses its input with the history summary (``attn(n) = n + g ⊙ (W_o c − n)``), so the
    residual adds only its gated update ``g ⊙ (W_o c − n)``; a closed gate leaves the block the identity.
    Causal, like its attention. (B, L, D) -> (B, L, D).

    Args:
        d_model: D.
        n_heads: attention heads.
        window: attention history W (steps, the current one included).
        ff_mult: hidden width of the feed-forward network, ff_mult · D.
        dropout: on both residual branches and inside the feed-forward network.
        similarity: "cosine", "dot" or "none" (see `EMAHistoryAttention`).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        window: int,
        ff_mult: int = 2,
        dropout: float = 0.0,
        similarity: str = "cosine",
    ) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(d_model)
        self.attn = EMAHistoryAttention(d_model, n_heads, window, similarity=similarity)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, ff_mult * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * d_model, d_model),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, L, D), mask (B, L) bool -> y (B, L, D) [, attention weights (B, H, L, W)]."""
        n = self.norm_attn(x)
        out = self.attn(n, mask=mask, return_weights=return_weights)
        a, weights = out if return_weights else (out, None)
        x = x + self.dropout(a - n)
        x = x + self.dropout(self.ff(self.norm_ff(x)))
        return (x, weights) if return_weights else x

    def step(
        self, x_t: Tensor, state: AttentionState | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, AttentionState]:
        """One streaming step, x_t (B, D) [mask (B,)] -> (y_t (B, D), state); equals `forward` step by step."""
        n = self.norm_attn(x_t)
        a, state = self.attn.step(n, state, mask)
        x_t = x_t + self.dropout(a - n)
        x_t = x_t + self.dropout(self.ff(self.norm_ff(x_t)))
        return x_t, state
