"""The DDPM noise-prediction UNet (Ho et al., 2020), scaled down for small images.

It maps (x_t, t) to a tensor shaped like x_t. It knows nothing about the noise schedule: the
timestep arrives as an integer (or float) and is embedded sinusoidally, as in the Transformer.

With ``num_classes=K`` it is class-conditional: ``forward(x, t, y)`` adds a learned embedding of the
class y to the time embedding (as in Ho & Salimans, 2022, and the ADM UNet). The embedding has K + 1
rows: row K is the "null" class, the unconditional branch that label dropout trains and classifier-free
guidance queries (``y=None`` means that row for every image). The network knows nothing of guidance:
that is a combination of its outputs, done by the model that samples.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from genbench.errors import GenbenchError
from genbench.nets.validation import check_channels, check_divisible_size


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: [sin(t w_i), cos(t w_i)]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _cpu_reduced(x: torch.Tensor) -> bool:
    """A bf16/fp16 activation on a CPU: what bf16 autocast hands the layers after a convolution."""
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that normalises in fp32 when handed bf16 on a CPU, and returns the input's dtype.

    Why: under ``trainer.precision=bf16-mixed`` on a CPU the convolutions return bf16, and PyTorch's
    CPU GroupNorm kernels on bf16 input (channels_last above all, our CPU default) ran forward +
    backward 3-5x slower than on the same tensor in fp32 (torch 2.14, Xeon with AMX-BF16): in a DDPM
    step that cost more than bf16 convolutions saved. Casting in and out is cheap next to it. fp32
    input (and any GPU) takes the plain path, so fp32 training is bit-identical."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _cpu_reduced(x):
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


def _norm(ch: int) -> nn.GroupNorm:
    return GroupNorm32(min(32, ch // 4) if ch >= 4 else 1, ch)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention``, in fp32 when handed bf16 on a CPU (autocast off around it).

    Why: PyTorch's CPU flash-attention kernel in bf16 ran forward + backward ~5x slower than in
    fp32 at the UNet's sizes (64-token maps, 16-64 channels, torch 2.14 on a Xeon with AMX-BF16),
    while the attention is a small share of the FLOPs. fp32 input takes the plain path (bit-identical)."""
    if _cpu_reduced(q):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v)


class ResBlock(nn.Module):
    def __init__(self, ch_in: int, ch_out: int, temb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(ch_in), nn.Conv2d(ch_in, ch_out, 3, padding=1)
        self.temb = nn.Linear(temb_dim, ch_out)
        self.norm2, self.conv2 = _norm(ch_out), nn.Conv2d(ch_out, ch_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(ch_in, ch_out, 1) if ch_in != ch_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head spatial self-attention, used only at low resolution where it is cheap."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """Encoder-decoder with skip connections; ``channel_mults`` sets the depth (one downsample each
    level but the last), ``attn_resolutions`` the feature-map sizes that get self-attention, and
    ``num_classes`` (None: unconditional) the classes of its optional class embedding."""

    def __init__(
        self,
        channels: int = 1,
        image_size: int = 32,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attn_resolutions: tuple[int, ...] = (8,),
        dropout: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        check_channels("UNet", channels)
        check_divisible_size("UNet", image_size, len(channel_mults) - 1)
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 1):
            raise GenbenchError(f"UNet(num_classes={num_classes!r}): use a class count >= 1, or None (unconditional).")
        self.base_channels = base_channels
        #: the number of real classes (None: unconditional); index ``num_classes`` is the null class
        self.num_classes = None if num_classes is None else int(num_classes)
        temb_dim = base_channels * 4
        self.temb_mlp = nn.Sequential(nn.Linear(base_channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.class_emb = None if self.num_classes is None else nn.Embedding(self.num_classes + 1, temb_dim)
        self.stem = nn.Conv2d(channels, base_channels, 3, padding=1)

        self.down = nn.ModuleList()
        skip_chs, ch, res = [base_channels], base_channels, image_size
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                block = nn.ModuleList([ResBlock(ch, base_channels * mult, temb_dim, dropout)])
                ch = base_channels * mult
                if res in attn_resolutions:
                    block.append(SelfAttention(ch))
                self.down.append(block)
                skip_chs.append(ch)
            if level != len(channel_mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skip_chs.append(ch)
                res //= 2

        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, temb_dim, dropout), SelfAttention(ch), ResBlock(ch, ch, temb_dim, dropout)]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(ch + skip_chs.pop(), base_channels * mult, temb_dim, dropout)])
                ch = base_channels * mult
                if res in attn_resolutions:
                    block.append(SelfAttention(ch))
                self.up.append(block)
            if level != 0:
                self.up.append(
                    nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)])
                )
                res *= 2
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1))

    @staticmethod
    def _run(block: nn.ModuleList, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        for layer in block:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
        return h

    @property
    def null_class(self) -> int | None:
        """The embedding row of the unconditional branch (None for an unconditional network)."""
        return self.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The output at states ``x`` and timesteps ``t``; ``y``: the classes (0..K-1, or K for the
        null class), one per image; None on a conditional network is the null class."""
        temb = self.temb_mlp(timestep_embedding(t, self.base_channels))
        if self.class_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            temb = temb + self.class_emb(y).to(temb.dtype)
        elif y is not None:
            raise GenbenchError(
                "This UNet is unconditional (num_classes=None) and cannot take classes: build it with num_classes=K."
            )
        h = self.stem(x)
        skips = [h]
        for block in self.down:
            h = self._run(block, h, temb)
            skips.append(h)
        h = self._run(self.mid, h, temb)
        for block in self.up:
            if isinstance(block[0], ResBlock):
                h = self._run(block, torch.cat([h, skips.pop()], dim=1), temb)
            else:
                h = self._run(block, h, temb)
        return self.out(h)
