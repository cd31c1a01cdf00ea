"""EMAAttentionForecaster: EMA history attention learning what a seasonal closed-form ridge leaves behind.

The forecast is ``cycle + ridge + kernel ridge + attention residual``:

1. a per-channel seasonal cycle (phase means on train, as CycleNet's learned cycle, Lin et al. 2024);
2. the closed-form ridge of `tsattn.models.ridge` from the deseasonalised lookback to the horizon, shared by all
   channels (as DLinear's linear map, Zeng et al. 2023);
3. a ridge from random Fourier features of the window's last ``context`` steps (a kernel ridge, Rahimi & Recht
   2007, `tsattn.models.random_features`) fitted to what 1-2 leave on the training windows, its penalty chosen on
   validation (none when it does not help there);
4. a channel-independent stack of EMA history attention blocks over patch tokens of the deseasonalised window
   (patches as in PatchTST, Nie et al. 2023), with an EMA trend/remainder split of its input, whose zero-initialised
   head adds a correction to the forecast.

At step 0 the model is the closed form 1-3 (with ``random_features=0``, exactly `RidgeCycle` with the same
``cycle_half_life``); training learns the correction (and, with ``linear_lr_scale`` > 0, moves the cycle and the
ridge map slowly, weight decay pulling them back to the closed form; frozen by default). Early stopping with
best-weights restore can therefore always keep the closed-form start. Forecasts after the fit add the correction times
``correction_weight`` (0.5): the average of the start and the trained model, an ensemble of a model and its
fine-tuned version as in WiSE-FT (Wortsman et al. 2022); training and the fit's validation see the whole correction.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus
from torch import Tensor, nn

from tsattn.layers import EMA, EMAAttentionBlock
from tsattn.models.base import DeviceLoader, Forecaster
from tsattn.models.phase_ridge import (
    check_phase_period,
    fit_phase_ridge,
    phase_forecast,
    phase_inputs,
    stack_weight,
)
from tsattn.models.random_features import FEATURE_ALPHA_GRID, RandomFourierFeatures, feature_candidates
from tsattn.models.ridge import (
    RidgeStats,
    check_alpha,
    check_half_life,
    cv_group,
    cycle_period,
    phase_index,
    ridge_cycle_stats,
    ridge_inputs,
)

__all__ = ["EMAAttentionForecaster", "PatchEMAAttention"]

log = logging.getLogger(__name__)

_FEATURE_CHUNK_ROWS = 8192  # rows per update of the random-feature XᵀX (a batch's rows of one fold are too few)
_MAX_FEATURE_ROWS = 131_072  # rows (window, channel) the kernel ridge is fitted and scored on; a random subset beyond
_MAX_RESIDUAL_WINDOWS = 65_536  # windows used for the starting residual quantiles (the train loader is shuffled)


class PatchEMAAttention(nn.Module):
    """Channel-independent EMA-attention encoder of one window: x (N, L) -> correction (N, H, Q).

    The window is split into an EMA trend and the remainder (``trend_decay``; none when None), both cut into
    patches of ``patch_len`` steps every ``patch_stride`` steps (the last patch ends at the last step; the start is
    padded with the first value), embedded to ``d_model`` with a learned position embedding and an optional
    per-series-channel embedding, passed through ``n_blocks`` `EMAAttentionBlock` s, and mapped by a
    zero-initialised linear head to H * Q values.
    """

    def __init__(
        self,
        lookback: int,
        horizon: int,
        n_outputs: int,
        d_model: int,
        n_heads: int,
        window: int | None,
        n_blocks: int,
        patch_len: int,
        patch_stride: int,
        ff_mult: int,
        dropout: float,
        trend_decay: float | None,
        n_embeddings: int = 0,
        head_rank: int | None = None,
    ) -> None:
        super().__init__()
        self.patch_len = max(1, min(patch_len, lookback))
        self.patch_stride = max(1, min(patch_stride, self.patch_len))
        self.n_tokens = math.ceil((lookback - self.patch_len) / self.patch_stride) + 1
        self.pad = (self.n_tokens - 1) * self.patch_stride + self.patch_len - lookback
        self.window = min(window or self.n_tokens, self.n_tokens)
        self.horizon, self.n_outputs = horizon, n_outputs
        self.trend = None if trend_decay is None else EMA(1, decay=trend_decay)
        n_features = 2 if self.trend is not None else 1
        self.embed = nn.Linear(n_features * self.patch_len, d_model)
        self.position = nn.Parameter(torch.randn(self.n_tokens, d_model) * 0.02)
        self.embedding = nn.Embedding(n_embeddings, d_model) if n_embeddings else None
        if self.embedding is not None:
            nn.init.zeros_(self.embedding.weight)
        self.blocks = nn.ModuleList(
            EMAAttentionBlock(d_model, n_heads, self.window, ff_mult=ff_mult, dropout=dropout)
            for _ in range(n_blocks)
        )
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        if head_rank:
            # low-rank head: tokens -> a few coefficients -> horizon; far fewer weights at long horizons
            self.head = nn.Sequential(
                nn.Linear(self.n_tokens * d_model, head_rank), nn.Linear(head_rank, horizon * n_outputs)
            )
            last = self.head[-1]
        else:
            self.head = last = nn.Linear(self.n_tokens * d_model, horizon * n_outputs)
        nn.init.zeros_(last.weight)  # the correction starts at exactly zero: the model starts at the ridge
        nn.init.zeros_(last.bias)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, L) -> (trend, remainder), each (N, L); the trend is zero without a trend split."""
        if self.trend is None:
            return torch.zeros_like(x), x
        trend = self.trend(x.unsqueeze(-1)).squeeze(-1)  # (N, L, 1) -> (N, L)
        return trend, x - trend

    def forward(
        self, x: Tensor, embedding_idx: Tensor | None = None, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor], Tensor]:
        """x (N, L), embedding_idx (N,) -> (N, H, Q) [, per-block weights (N, heads, tokens, window), trend (N, L)]."""
        trend, rest = self.split(x)
        parts = [trend, rest] if self.trend is not None else [rest]
        seq = torch.stack(parts, dim=1)  # (N, F, L)
        seq = F.pad(seq, (self.pad, 0), mode="replicate")  # (N, F, pad + L)
        tokens = seq.unfold(-1, self.patch_len, self.patch_stride)  # (N, F, T, P)
        tokens = tokens.transpose(1, 2).flatten(2)  # (N, T, F * P)
        z = self.embed(tokens) + self.position  # (N, T, D)
        if self.embedding is not None and embedding_idx is not None:
            z = z + self.embedding(embedding_idx)[:, None, :]
        weights = []
        for block in self.blocks:
            if return_weights:
                z, w = block(z, return_weights=True)
                weights.append(w)
            else:
                z = block(z)
        out = self.head(self.dropout(self.norm(z).flatten(1)))  # (N, T * D) -> (N, H * Q)
        out = out.view(-1, self.horizon, self.n_outputs)
        return (out, weights, trend) if return_weights else out


class EMAAttentionForecaster(Forecaster):
    """The flagship: seasonal cycle + closed-form ridges + EMA-attention correction, (B, L, C) -> (B, H, C[, Q]).

    ``forecast = cycle(phase) + level + x @ W + phi(x) @ V + attention(x)`` with ``x`` the deseasonalised window minus
    its last value ``level``, per channel, and ``phi`` its random Fourier features (module docstring).
    ``fit_closed_form`` fits the cycle and W exactly as `RidgeCycle` does (same functions), then V on the residuals
    of the training windows (penalty chosen on validation), so the untrained model with ``random_features=0`` equals
    `RidgeCycle` with the same ``cycle_half_life``; training learns the attention correction; with
    ``linear_lr_scale`` > 0 the cycle and W are ``start + linear_lr_scale * delta`` with ``delta`` trainable from
    zero (so weight decay pulls them back to the closed form, and any optimizer works).

    Design, chosen by measurement (ETTh1, lookback 96, horizon 96, validation / test MSE, one seed, 1 thread of a
    shared 2-core CPU; the closed-form start with plain phase means is 0.6888 / 0.3711):

    - Start at the closed form, learn a residual. Trained from scratch the attention models of DESIGN §6 stayed
      at ridge level (0.386-0.392); on top of RidgeCycle the correction reaches 0.660-0.667 / 0.366-0.371.
    - Patch tokens (16 steps every 8: 12 tokens), not step tokens: one step-token training step costs ~8x a
      patch step (2.0 s vs 0.26 s at batch 128) with a 6x larger head, which the 120 s budget cannot carry.
    - Channel independence (one network shared by the channels, plus a learned channel embedding): mixing all
      channels' windows into one input was never selected on validation; the channel embedding helped validation
      (0.660 vs 0.674 without, MAE loss).
    - EMA trend/remainder split of the attention input: without it 0.665 / 0.372, with it 0.667 / 0.370 (MSE
      loss); kept, as it also gives `explain` the trend each window is read against.
    - MAE training loss (default when no quantiles): 0.660 / 0.367 against 0.667 / 0.370 with MSE.
    - Regularisation over capacity: d_model 64 or two blocks did not help (0.667 / 0.373; 0.658 / 0.371);
      dropout 0.3 hurt validation (0.680); per-window normalisation of the correction's input overfit at once
      (off by default, ``instance_norm``).
    - A low-rank head (``head_rank`` 16: tokens -> 16 coefficients -> horizon) and a frozen closed form
      (``linear_lr_scale`` 0): at horizon 720 the full-rank head (276k weights) with a trainable ridge map improved
      validation (1.546 -> 1.535) while test MSE went from 0.443 to 0.479; low rank and frozen gave 1.543 / 0.441
      (low rank alone 0.442, frozen alone 0.448). At horizon 96 both are within a seed's noise of the full model
      (0.665 / 0.368 against 0.660-0.670 / 0.367-0.371).
    - ``context`` (the steps the kernel ridge and the correction read) defaults to the whole lookback. At lookback
      512 the whole-window correction (63 tokens) never beat the closed-form start on validation at any horizon
      (fits 627-857 s), and a kernel of the whole window was kept at H=96 only, for no test gain. With
      ``context=96`` the start improves at H = 96 / 192 / 336 (validation 0.6477 / 0.9028 / 1.1505 against
      RidgeCycle's 0.6639 / 0.9134 / 1.1536, test 0.3598 / 0.3907 / 0.4127 against 0.3641 / 0.3966 / 0.4150) and
      the correction trains in 80-165 s, but the trained epochs that validation picks test worse than the start
      (0.3662 at H=96, 0.4419 at 720 against RidgeCycle's 0.4176), so the default stays the whole lookback.
    - Plain phase means (``cycle_half_life`` None). A recency-weighted cycle (0.5: row weights halve every half of
      the training rows back from the last, as Holt-Winters smooths its seasonal indices) is a better closed form:
      at H = 96 / 192 / 336 / 720 validation 0.6861 / 0.9795 / 1.2640 / 1.5383 against 0.6888 / 0.9830 / 1.2687 /
      1.5456, test 0.3696 / 0.4131 / 0.4468 / 0.4400 against 0.3711 / 0.4150 / 0.4492 / 0.4426 (better on test
      for half-lives 0.5 to 2 on ETTh1, its 4-hourly means and taylor's half-hourly demand; 0.2-0.4 % worse on
      ETTh1's oil temperature alone). With the correction it tested 0.3655 / 0.4137 / 0.4468 / 0.4474 against
      0.3665 / 0.4130 / 0.4492 / 0.4404: at H=720 trained epochs then validate better and test worse (seeds 0-2:
      0.4474, 0.4720, 0.4761; with plain means the first epoch is kept, 0.4404, 0.4419, 0.4417), so it is an
      option, not the default.
    - No stacked start by default (``phase_stack``: RidgeCycle blended with `PhaseRidge`, the weight from
      out-of-fold forecasts on the training windows). At lookback 512 it tested better than both closed forms at
      H = 192-720 (0.3875 / 0.4065 / 0.4098) but validated 0.1-0.7 % worse than RidgeCycle at every horizon; at
      lookback 96 the flagship with it tested 0.3679 / 0.4162 / 0.4493 / 0.4414, no better than without.
    - A kernel-ridge part in the start (``random_features`` 2048, bandwidth 1; measured with the whole model at
      H = 96 / 192 / 336 / 720): validation picked its penalty 1 at 96, 192 and 336 (start alone 0.6743 / 0.3617,
      0.9764 / 0.4053 and 1.2684 / 0.4407 against RidgeCycle's 0.6888 / 0.3711, 0.9830 / 0.4150 and 1.2687 /
      0.4492) and none at 720; trained 0.3627 / 0.4084 / 0.4445 / 0.4404 against 0.3665 / 0.4130 / 0.4492 / 0.4404
      with ``random_features=0``. Bounded features of the whole window: a smooth nonlinear map that a linear ridge
      cannot fit and that gradient training of the correction did not find. More features approximate the kernel
      better: 1024 gave 0.3639 / 0.4076 and no map at 336 (trained 0.3633 / 0.4098 / 0.4492); 4096 gave the start
      0.3611 / 0.4043 / 0.4440 at H = 96-336 (worse at 336) for four times the cost of XᵀX. A Laplacian or
      Matérn kernel, bandwidths 0.7 to 2, orthogonal random features, inputs scaled by their std and the phase of
      day as kernel inputs were no better on test.
      Its penalty comes from validation: blocked CV on the training windows (the fallback without validation
      data) saw a 0.5 % gain at H=96 with 1024 features (0.3456 against 0.3472), validation 1.4 %.
    - One kernel shared by the channels (``feature_channel_similarity`` 1). With 0.9 the start alone validated and
      tested better on ETTh1 at every horizon (0.3603 / 0.4041 / 0.4386 / 0.4397), but the trained correction kept
      at 96, 336 and 720 tested worse than that start (0.3635 / 0.4041 / 0.4417 / 0.4500, at 720 worse than
      RidgeCycle), and over 14 runs on data with several channels the whole fit was better in 4 and worse in 5.
      With the block rule and the averaged correction (below) ETTh1 tests 0.3598 / 0.4041 / 0.4386 / 0.4400, so
      ``configs/etth1.yaml`` sets 0.9; msft still tests 10-12 % worse with it at H = 96 and 192.
    - Forecasts average the start and the trained model (``correction_weight`` 0.5). Selection is unchanged: the
      fit's validation scores the whole correction, and where it keeps the start there is nothing to weigh. The
      average validates better than the start wherever the trained epoch does, in every block of the block rule
      too (the squared error is convex). On ETTh1 the epochs kept at H = 96 / 336 / 720 tested 0.3627 / 0.4445 /
      0.4403 alone and 0.3601 / 0.4419 / 0.4392 averaged (the start: 0.3617 / 0.4407 / 0.4426); over 25 runs on
      ETTh1 and the data of `benchmarks/LTSF.md` the average was better than the trained model alone in 7, worse in
      1 (by 0.0001) and the same in 17 (the start kept). Where the correction's gain is real the average gives
      up part of it (the motion sample, were the lowest validation score alone to decide: 0.0259 alone, 0.0269
      averaged). Scoring the average in the fit's validation instead let more trained epochs through the block
      rule, which tested worse (msft at H = 96 / 192: 0.1101 / 0.1903 against the start's 0.1071 / 0.1825).
    - The correction improves validation over the kernel start at every horizon (0.6639 against 0.6743 at H=96)
      but on test only at 720: at 96-336 the selected epochs alone tested 0.3-0.9 % worse than the start (at 192
      `BestWeights`' block rule now keeps the start: the epoch validated better in fewer than 3 of 4 blocks). At 336 the
      first epoch validated 0.15 % better (1.2664) and tested 0.4445; without the kernel part every trained
      variant validated worse there and selection kept the start (`BestWeights`, used by the CLI and the
      benchmark, scores the start as epoch -1; a plain ModelCheckpoint would not).

    Args:
        period: season length in steps (linked from the DataModule); None or 1: no cycle.
        d_model, n_heads: width and heads of the attention blocks.
        window: attention history in tokens (None: all tokens of the lookback).
        n_blocks: `EMAAttentionBlock` s.
        patch_len, patch_stride: token length and hop in steps (1 and 1: one token per step).
        ff_mult: feed-forward width multiplier of the blocks.
        dropout: dropout in the blocks and before the head.
        trend_decay: initial λ of the learnable EMA trend that splits the attention input into trend and
            remainder; None: no split.
        channel_embedding: add a learned per-channel embedding to the tokens (weights stay shared).
        instance_norm: divide the correction's input by its window's std (and scale its output back).
        head_rank: rank of the head (tokens -> head_rank -> horizon); None: one full linear map.
        context: steps at the end of the window that the nonlinear parts read, the kernel ridge and the attention
            correction (the linear closed form always reads the whole lookback); None: the whole lookback.
        alpha: relative ridge penalty of the closed-form start (None: blocked cross-validation, see `Ridge`), of
            both closed forms with ``phase_stack``.
        cycle_half_life: recency weighting of the training rows in the cycle, as in `RidgeCycle` (weights halve
            every ``cycle_half_life`` times the training rows back from the last); None: plain phase means.
        phase_stack: stack `PhaseRidge` (SparseTSF in closed form) on the start: the closed-form forecast is
            ``β * RidgeCycle + (1 - β) * PhaseRidge``, β in [0, 1] minimising the squared error of out-of-fold
            forecasts (blocked 5-fold CV on the training windows). Needs ``lookback >= period`` and
            ``random_features=0``; meant for long lookbacks (many periods in the window).
        random_features: D, random Fourier features of the window's last ``context`` steps in the kernel-ridge part
            of the start (0: none). Its ridge map is fitted to the residuals of cycle + ridge on the training
            windows, with the relative penalty in `FEATURE_ALPHA_GRID` (or none) that gives the lowest closed-form
            MSE on the validation windows of the trainer's DataModule (blocked CV on the training windows when there
            is none).
        feature_bandwidth: kernel length scale in units of the RMS norm of what it reads of a training window (see
            `RandomFourierFeatures.set_scale`).
        feature_channel_similarity: ρ in (0, 1], the kernel between the same window in two different channels
            relative to one channel (`RandomFourierFeatures`' ``group_similarity``): the one map of the kernel ridge
            fits what the channels share, and what each channel does its own way shrunk toward it; 1: one kernel
            shared by all channels.
        linear_lr_scale: scale of the updates of the cycle and the ridge map relative to the network
            (0, the default, freezes them at the closed form).
        correction_weight: weight in [0, 1] of the trained correction in forecasts after the fit (validation,
            test, predict): 0.5 averages the closed-form start and the trained model, 1 is the trained model alone.
            Training and the fit's validation, which selects the weights, use the whole correction.
        loss: training loss; default MAE (L1) for point forecasts, pinball for quantiles.
        quantiles, revin, optimizer, lr_scheduler: see `Forecaster`; ``revin`` must stay False (the cycle lives
            in the units of the scaled series).
    """

    def __init__(
        self,
        n_channels: int,
        lookback: int,
        horizon: int,
        period: int | None = None,
        d_model: int = 32,
        n_heads: int = 4,
        window: int | None = None,
        n_blocks: int = 1,
        patch_len: int = 16,
        patch_stride: int = 8,
        ff_mult: int = 2,
        dropout: float = 0.1,
        trend_decay: float | None = 0.9,
        channel_embedding: bool = True,
        instance_norm: bool = False,
        head_rank: int | None = 16,
        context: int | None = None,
        alpha: float | None = None,
        cycle_half_life: float | None = None,
        phase_stack: bool = False,
        random_features: int = 2048,
        feature_bandwidth: float = 1.0,
        feature_channel_similarity: float = 1.0,
        linear_lr_scale: float = 0.0,
        correction_weight: float = 0.5,
        quantiles: Sequence[float] | None = None,
        revin: bool = False,
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        season = cycle_period("EMAAttentionForecaster", period, revin)  # a new name: the hparams keep `period` as given
        if loss is None and not quantiles:
            loss = nn.L1Loss()  # measured: MAE training beats MSE training on validation and test MSE alike
        super().__init__(n_channels, lookback, horizon, quantiles, revin, loss, optimizer, lr_scheduler)
        if linear_lr_scale < 0:
            raise ValueError(f"linear_lr_scale must be >= 0, got {linear_lr_scale!r}")
        if not 0.0 <= correction_weight <= 1.0:
            raise ValueError(
                f"correction_weight must be in [0, 1] (1: the trained model alone), got {correction_weight!r}"
            )
        if context is not None and not 1 <= int(context):
            raise ValueError(f"context must be a positive number of steps or None, got {context!r}")
        if trend_decay is not None and not 0.0 < trend_decay < 1.0:
            raise ValueError(f"trend_decay must be in (0, 1) or None, got {trend_decay!r}")
        if isinstance(random_features, bool) or int(random_features) != random_features or random_features < 0:
            raise ValueError(f"random_features must be a number of features >= 0 (0: none), got {random_features!r}")
        if not 0.0 < feature_channel_similarity <= 1.0:
            raise ValueError(
                "feature_channel_similarity must be in (0, 1] (1: one kernel shared by all channels), "
                f"got {feature_channel_similarity!r}"
            )
        if random_features and phase_stack:
            raise ValueError("phase_stack and random_features cannot be combined; set random_features=0 to stack")
        self.period = season
        self.context = self.lookback if context is None else min(int(context), self.lookback)
        self.alpha = check_alpha(alpha)
        self.cycle_half_life = check_half_life(cycle_half_life)
        self.linear_lr_scale = float(linear_lr_scale)
        self.correction_weight = float(correction_weight)
        self.instance_norm = instance_norm
        self.phase_stack = bool(phase_stack)
        if self.phase_stack:
            check_phase_period("EMAAttentionForecaster with phase_stack", self.period, self.lookback)
        # Closed-form start (fitted in fit_closed_form) and the trainable moves away from it.
        self.register_buffer("cycle_start", torch.zeros(self.period, self.n_channels))  # (P, C)
        self.register_buffer("weight_start", torch.zeros(self.lookback, self.horizon))  # (L, H)
        self.register_buffer("residual_quantiles", torch.zeros(self.horizon, self.n_channels, self.n_outputs))
        self.register_buffer("fitted_alpha", torch.tensor(float("nan")))
        if self.phase_stack:  # PhaseRidge's map (K, M) and the weight of RidgeCycle's forecast in the stack
            n_out = -(-self.horizon // self.period)
            self.register_buffer("phase_weight", torch.zeros(self.lookback // self.period, n_out))
            self.register_buffer("stack_beta", torch.tensor(1.0))
        # the random-feature (kernel) ridge on what the linear closed form leaves; its map stays zero until fitted
        self.features = (
            RandomFourierFeatures(
                self.context,
                int(random_features),
                feature_bandwidth,
                n_groups=self.n_channels,
                group_similarity=feature_channel_similarity,
            )
            if random_features
            else None
        )
        self.register_buffer("feature_weight", torch.zeros(int(random_features), self.horizon))  # (D, H)
        self.register_buffer("feature_alpha", torch.tensor(float("nan")))
        if self.linear_lr_scale > 0:
            self.cycle_delta = nn.Parameter(torch.zeros(self.period, self.n_channels))
            self.weight_delta = nn.Parameter(torch.zeros(self.lookback, self.horizon))
        else:
            self.cycle_delta = self.weight_delta = None
        self.net = PatchEMAAttention(
            self.context,
            self.horizon,
            self.n_outputs,
            d_model,
            n_heads,
            window,
            n_blocks,
            patch_len,
            patch_stride,
            ff_mult,
            dropout,
            trend_decay,
            n_embeddings=self.n_channels if channel_embedding else 0,
            head_rank=head_rank,
        )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints saved before the kernel-ridge part load as the model they were: its map left at zero; those
        saved before ``correction_weight`` forecast with the whole correction, as they did."""
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("hyper_parameters")
        if saved is not None and "correction_weight" not in saved:
            self.correction_weight = 1.0
        state = checkpoint.get("state_dict", {})
        omega = state.get("features.omega")
        if omega is not None and self.features is not None and omega.shape[0] != self.context:
            raise ValueError(
                f"this checkpoint's kernel ridge reads {omega.shape[0]} steps, but the model's context is "
                f"{self.context}: it was saved by a version whose kernel read the whole lookback; refit it"
            )
        if omega is not None and "features.group_phase" not in state:  # saved when all channels shared one kernel
            state["features.group_phase"] = torch.zeros(self.n_channels, omega.shape[1])
        if "feature_weight" not in state:
            state["feature_weight"] = torch.zeros_like(self.feature_weight)
            state["feature_alpha"] = torch.tensor(math.inf)
            if self.features is not None:
                state.update({f"features.{k}": v for k, v in self.features.state_dict().items()})

    # ----------------------------------------------------------------- parts
    @property
    def fitting(self) -> bool:
        """True while a ``Trainer.fit`` runs: its validation, which selects the weights, scores the whole correction."""
        trainer = self._trainer
        if trainer is None:
            return False
        return trainer.state.fn == TrainerFn.FITTING and trainer.state.status == TrainerStatus.RUNNING

    @property
    def cycle(self) -> Tensor:
        """Current seasonal cycle (P, C)."""
        if self.cycle_delta is None:
            return self.cycle_start
        return self.cycle_start + self.linear_lr_scale * self.cycle_delta

    @property
    def weight(self) -> Tensor:
        """Current ridge map (L, H)."""
        if self.weight_delta is None:
            return self.weight_start
        return self.weight_start + self.linear_lr_scale * self.weight_delta

    def _parts(self, past: Tensor, time_idx: Tensor | None, kernel: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """past (B, L, C) -> x (B, C, L), closed-form point forecast (B, H, C), channel index (B * C,); without the
        kernel ridge when ``kernel`` is False."""
        phase = phase_index(time_idx, self.lookback, self.horizon, self.period, past.device)
        x, level, future_cycle = ridge_inputs(past, self.cycle.to(past.dtype), phase)
        linear = (x @ self.weight.to(past.dtype)).transpose(1, 2) + level + future_cycle  # (B, H, C)
        channels = torch.arange(self.n_channels, device=past.device).repeat(past.shape[0])  # (B * C,)
        if kernel and self.features is not None:
            mapped = self.features(self._context(x), channels) @ self.feature_weight.to(past.dtype)  # (B * C, H)
            linear = linear + mapped.view(*x.shape[:2], self.horizon).transpose(1, 2)  # (B, C, H) -> (B, H, C)
        if self.phase_stack:
            rows, mean = phase_inputs(past, self.period)
            phased = phase_forecast(rows, mean, self.phase_weight.to(past.dtype), self.horizon)
            linear = self.stack_beta * linear + (1 - self.stack_beta) * phased
        return x, linear, channels

    def _context(self, x: Tensor) -> Tensor:
        """x (B, C, L) deseasonalised windows -> their last ``context`` steps, one row per window and channel
        (B * C, context): what the kernel ridge and the attention correction read."""
        return x[..., -self.context :].reshape(-1, self.context)

    def _net_input(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B * C, context) -> what the attention network reads, and the scale of its output (B * C, 1): each
        window divided by its std with ``instance_norm``, else as it is (scale 1)."""
        if not self.instance_norm:
            return x, x.new_ones(x.shape[0], 1)
        scale = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + 1e-5)
        return x / scale, scale

    def forecast(self, past: Tensor, time_idx: Tensor | None) -> Tensor:
        """past (B, L, C), time_idx (B,) -> (B, H, C, Q)."""
        b = past.shape[0]
        x, linear, channels = self._parts(past, time_idx)
        x, scale = self._net_input(self._context(x))  # (B * C, context), (B * C, 1)
        correction = self.net(x, channels) * scale.unsqueeze(-1)  # (B * C, H, Q)
        correction = correction.view(b, self.n_channels, self.horizon, self.n_outputs).transpose(1, 2)  # (B, H, C, Q)
        if not (self.training or self.fitting):  # forecasts after the fit: the start and the trained model averaged
            correction = self.correction_weight * correction
        return linear.unsqueeze(-1) + self.residual_quantiles + correction

    # ----------------------------------------------------------------- closed-form start
    @torch.no_grad()
    def fit_closed_form(self, loader: Iterable[dict[str, Tensor]]) -> None:
        cycle, stats = ridge_cycle_stats(
            loader,
            self.lookback,
            self.horizon,
            self.n_channels,
            self.period,
            cycle_half_life=self.cycle_half_life,
        )
        weight, alpha = stats.solve(self.alpha)
        self.cycle_start.copy_(cycle)
        self.weight_start.copy_(weight)
        self.fitted_alpha.fill_(alpha)
        if self.features is not None:
            with torch.random.fork_rng(devices=[]):  # its pass over the shuffled loader leaves training's stream alone
                self._fit_features(loader, stats)
        if self.phase_stack:
            self._fit_stack(loader, cycle, stats.fold_weights(alpha))
        if self.quantiles:
            self.residual_quantiles.copy_(self._start_quantiles(loader))

    def _fit_features(self, loader: Iterable[dict[str, Tensor]], stats: RidgeStats) -> None:
        """Fit the random-feature ridge to the linear closed form's residuals on the training windows.

        The penalty is chosen among `FEATURE_ALPHA_GRID` and none (the map left at zero) by the closed form's MSE on
        the validation windows of the trainer's DataModule, or by blocked CV on the training windows without one.
        Fit and validation each use at most about `_MAX_FEATURE_ROWS` rows (window, channel): on larger panels a
        seeded random share of them.
        """
        read = stats.xtx.sum(0).diagonal()[-self.context :]  # x's sums of squares at the steps the kernel reads
        self.features.set_scale(float(read.sum()) / (self.context * max(stats.n_rows, 1)))
        self.feature_weight.zero_()
        fstats = None
        keep = _row_share(stats.n_rows, "training")
        for phi, residual, group in _row_chunks(self._feature_rows(loader, keep), _FEATURE_CHUNK_ROWS):
            if fstats is None:
                fstats = RidgeStats(phi.shape[1], self.horizon, device=phi.device, product_dtype=torch.float32)
            fstats.update(phi, residual, group)
        if fstats is None:
            return
        candidates = feature_candidates(fstats)
        errors, source = self._feature_errors(candidates), "validation"
        if errors is None:  # no validation windows: blocked CV on the training windows (the zero map first)
            zero = fstats.yty.sum() / fstats.count.sum().clamp_min(1)
            errors, source = torch.cat([zero.reshape(1).cpu(), fstats.cv_errors(FEATURE_ALPHA_GRID)]), "blocked CV"
        best = int(torch.argmin(errors))
        if best:
            self.feature_weight.copy_(candidates[best - 1])
        self.feature_alpha.fill_(FEATURE_ALPHA_GRID[best - 1] if best else math.inf)
        log.info(
            "random features: %s MSE %s for alpha none, %s -> %s",
            source,
            [round(float(e), 5) for e in errors],
            list(FEATURE_ALPHA_GRID),
            FEATURE_ALPHA_GRID[best - 1] if best else "none",
        )

    def _feature_rows(self, loader: Iterable[dict[str, Tensor]], keep: float = 1.0):
        """Yield features (N, D), residuals (N, H) and CV groups (N,) of the rows (one per window and channel) of the
        loader's windows, each row kept with probability ``keep`` (all of them at 1)."""
        seen, block = 0, self.lookback + self.horizon
        draw = torch.Generator().manual_seed(torch.initial_seed())
        for batch in loader:
            group = cv_group(batch, block, seen).repeat_interleave(self.n_channels)  # (B * C,)
            seen += batch["past"].shape[0]
            rows = None
            if keep < 1.0:
                rows = torch.nonzero(torch.rand(group.shape[0], generator=draw) < keep).squeeze(1).to(group.device)
                group = group[rows]
            yield *self._feature_residuals(batch, rows), group

    def _feature_residuals(self, batch: dict[str, Tensor], rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Features (N, D) of a batch's rows and their residuals (N, H) under the closed form without the kernel
        ridge; ``rows`` (N,) indexes the B * C rows of the batch (None: all of them)."""
        x, linear, channels = self._parts(batch["past"], batch.get("time_idx"), kernel=False)
        residual = (batch["future"] - linear).transpose(1, 2).reshape(-1, self.horizon)  # (B, H, C) -> (B * C, H)
        x = self._context(x)
        if rows is not None:
            x, channels, residual = x[rows], channels[rows], residual[rows]
        return self.features(x, channels), residual

    def _feature_errors(self, candidates: list[Tensor]) -> Tensor | None:
        """Validation MSE (1 + len(candidates),) of the closed form with no feature map and with each candidate."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return None
        sse, count = torch.zeros(1 + len(candidates), dtype=torch.float64), 0
        maps = [w.to(device=self.device) for w in candidates]
        windows = datamodule.num_windows("val") if hasattr(datamodule, "num_windows") else 0
        keep = _row_share(windows * self.n_channels, "validation")
        for phi, residual, _ in self._feature_rows(DeviceLoader(datamodule.val_dataloader(), self.device), keep):
            phi, residual = phi.double(), residual.double()
            sse[0] += float(residual.square().sum())
            for i, w in enumerate(maps, start=1):
                sse[i] += float((residual - phi @ w).square().sum())
            count += residual.numel()
        return sse / count if count else None

    def _fit_stack(self, loader: Iterable[dict[str, Tensor]], cycle: Tensor, folds: Tensor) -> None:
        """Fit `PhaseRidge` and the weight of the stack by blocked CV (out-of-fold forecasts of both)."""
        phase = fit_phase_ridge(loader, self.lookback, self.horizon, self.period)
        weight, alphas = phase.solve(self.alpha)
        self.phase_weight.copy_(weight)
        phase_folds, block = phase.fold_weights(alphas), self.lookback + self.horizon

        def forecasts(batch: dict[str, Tensor], k: int) -> tuple[Tensor, Tensor]:
            past = batch["past"].double()
            steps = phase_index(batch["time_idx"], self.lookback, self.horizon, self.period, past.device)
            x, level, future_cycle = ridge_inputs(past, cycle.to(past.device), steps)
            ridge = (x @ folds[k].to(past.device)).transpose(1, 2) + level + future_cycle
            rows, mean = phase_inputs(past, self.period)
            return ridge, phase_forecast(rows, mean, phase_folds[k].to(past.device), self.horizon)

        def fold_of(batch: dict[str, Tensor]) -> Tensor:
            if batch.get("time_idx") is None:
                raise ValueError("phase_stack needs time_idx (the absolute step of the first future step) in the batch")
            return cv_group(batch, block, 0) % len(folds)

        self.stack_beta.fill_(stack_weight(loader, forecasts, fold_of))
        log.info("phase stack: PhaseRidge alpha=%s, weight of RidgeCycle %.3f", alphas, float(self.stack_beta))

    def _start_quantiles(self, loader: Iterable[dict[str, Tensor]]) -> Tensor:
        """Empirical quantiles (H, C, Q) of the closed-form residuals on training windows."""
        residuals, n = [], 0
        for batch in loader:
            _, linear, _ = self._parts(batch["past"], batch.get("time_idx"))
            residuals.append((batch["future"] - linear).cpu())  # (B, H, C)
            n += linear.shape[0]
            if n >= _MAX_RESIDUAL_WINDOWS:
                break
        res = torch.cat(residuals).double().numpy()
        return torch.from_numpy(np.quantile(res, self.quantiles, axis=0)).permute(1, 2, 0)  # (Q, H, C) -> (H, C, Q)

    # ----------------------------------------------------------------- analysis
    @torch.no_grad()
    def explain(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """What the model looked at for each window of ``batch`` (a dict with ``past`` and ``time_idx``).

        Returns a dict of:
            ``attention``: per block, weights (B, C, heads, tokens, window) over token offsets (0 = the token itself),
            ``trend``: the EMA trend of the attention input (B, context, C), in the scaled units of the series minus the
            cycle and the window's last value (divided by the window's std with ``instance_norm``; zeros without a
            trend split),
            ``token_ends``: (tokens,) index of the last step of each token in the lookback window (0 … lookback − 1),
            ``forecast``: (B, H, C[, Q]), ``closed_form``: (B, H, C) the cycle + ridge (+ kernel ridge) part,
            ``cycle`` (P, C), ``decays`` / ``half_lives``: per block (heads,), ``trend_decay``: the learned trend λ
            (or None).
        """
        past, time_idx = batch["past"], batch.get("time_idx")
        self._check_past(past)
        was_training = self.training
        self.eval()  # as forecasts are made: no dropout, the averaged correction
        try:
            with torch.no_grad():
                return self._explain(past, time_idx)
        finally:
            self.train(was_training)

    def _explain(self, past: Tensor, time_idx: Tensor | None) -> dict[str, Tensor]:
        b = past.shape[0]
        x, linear, channels = self._parts(past, time_idx)
        x, _ = self._net_input(self._context(x))
        _, weights, trend = self.net(x, channels, return_weights=True)
        shape = (b, self.n_channels)
        first = self.lookback - self.context  # the context is the window's last steps
        ends = first + torch.arange(self.net.n_tokens) * self.net.patch_stride + self.net.patch_len - 1 - self.net.pad
        blocks = [block.attn for block in self.net.blocks]
        return {
            "attention": [w.view(*shape, *w.shape[1:]) for w in weights],  # (B, C, heads, tokens, window)
            "trend": trend.view(*shape, self.context).transpose(1, 2),  # (B, C, context) -> (B, context, C)
            "token_ends": ends,
            "forecast": self(past, time_idx),
            "closed_form": linear,
            "cycle": self.cycle.detach().clone(),
            "decays": [attn.decays.detach().clone() for attn in blocks],
            "half_lives": [attn.half_lives.detach().clone() for attn in blocks],
            "trend_decay": None if self.net.trend is None else self.net.trend.decay.detach().clone(),
        }


def _row_share(n_rows: int, what: str) -> float:
    """The share of ``n_rows`` rows (window, channel) that keeps about `_MAX_FEATURE_ROWS` of them (1: all)."""
    keep = min(1.0, _MAX_FEATURE_ROWS / max(n_rows, 1))
    if keep < 1.0:
        log.info("random features: a random %.1f %% of the %d %s rows", 100 * keep, n_rows, what)
    return keep


def _row_chunks(parts: Iterable[tuple[Tensor, ...]], min_rows: int) -> Iterator[tuple[Tensor, ...]]:
    """Concatenate consecutive tuples of row-aligned tensors until each chunk has at least ``min_rows`` rows."""
    pending: list[tuple[Tensor, ...]] = []
    for part in parts:
        pending.append(part)
        if sum(p[0].shape[0] for p in pending) >= min_rows:
            yield tuple(torch.cat(column) for column in zip(*pending, strict=True))
            pending.clear()
    if pending:
        yield tuple(torch.cat(column) for column in zip(*pending, strict=True))
