"""Exponential moving average of a network's weights, kept as a frozen copy.

It lives inside the LightningModule (not in a callback) so that checkpoints carry it, resume
restores it exactly, DDP ranks keep identical copies, and ``sample()`` can use it directly.
"""

import copy

import torch
from torch import nn


class EMA(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        super().__init__()
        self.decay = decay
        self.warmup = warmup
        self.shadow = copy.deepcopy(model).requires_grad_(False).eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """With warm-up, decay = min(decay, (1 + n) / (10 + n)): early averages forget the random
        init quickly instead of lagging thousands of steps behind (as in TF's EMA and lucidrains)."""
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        ema_params = list(self.shadow.parameters())
        params = [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_params, strict=True)]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)  # one fused op over all tensors
        for b_ema, b in zip(self.shadow.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.num_updates += 1

    def forward(self, *args, **kwargs):
        return self.shadow(*args, **kwargs)

    def train(self, mode: bool = True) -> "EMA":
        # The shadow copy always stays in eval mode (no dropout), whatever the parent does.
        super().train(mode)
        self.shadow.eval()
        return self
