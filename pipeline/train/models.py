"""The small models the tasks train: a decoder-only transformer LM and a CNN classifier.

Both are deliberately small (a laptop trains them in minutes on CPU) but built the way
their large relatives are, so the training loop exercises the real code paths: fused
causal attention, pre-norm residual blocks, tied embeddings, normalization layers that
behave the same under DDP as on one process.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t only sees positions <= t."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # [B, T, D] -> [B, H, T, D/H], the layout scaled_dot_product_attention expects.
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
                   for z in (q, k, v))
        # is_causal lets torch pick a fused kernel (flash / memory-efficient) and build
        # the triangular mask itself instead of materializing a [T, T] tensor.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)).

    Pre-norm keeps the residual stream un-normalized, which trains stably without
    learning-rate warmup tricks at these small sizes."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerLM(nn.Module):
    """Decoder-only transformer language model.

    Token embedding + learned positional embedding, `n_layers` pre-norm blocks, a final
    LayerNorm, and an output projection tied to the token embedding (fewer parameters,
    and input and output share one notion of what a token means).

    `forward(tokens [B, T] int64) -> logits [B, T, vocab_size]`, T <= max_seq_len.
    """

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, n_heads: int,
                 max_seq_len: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied
        self._init_weights(n_layers)

    def _init_weights(self, n_layers: int) -> None:
        # GPT-2 initialization: N(0, 0.02), and the projections that write into the
        # residual stream scaled by 1/sqrt(2 * n_layers) so its variance does not grow
        # with depth.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        residual_std = 0.02 / math.sqrt(2 * max(n_layers, 1))
        for block in self.blocks:
            assert isinstance(block, Block)
            nn.init.normal_(block.attn.proj.weight, std=residual_std)
            last = block.mlp[2]
            assert isinstance(last, nn.Linear)
            nn.init.normal_(last.weight, std=residual_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        if t > self.max_seq_len:
            raise ValueError(f"sequence of {t} tokens exceeds max_seq_len={self.max_seq_len}")
        pos = torch.arange(t, device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.ln_f(x))
        return logits


def _groups(channels: int) -> int:
    """Largest of 8, 4, 2, 1 groups that divides `channels`."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class ConvBlock(nn.Module):
    """conv3x3 -> GroupNorm -> ReLU, optionally followed by 2x2 max pooling."""

    def __init__(self, c_in: int, c_out: int, pool: bool) -> None:
        super().__init__()
        # No conv bias: the normalization that follows has its own shift.
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
        self.norm = nn.GroupNorm(_groups(c_out), c_out)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.pool(F.relu(self.norm(self.conv(x))))
        return out


class SmallCNN(nn.Module):
    """Four conv blocks (widths c, 2c, 4c, 4c; pooling after the first three), global
    average pooling and a linear head.

    GroupNorm rather than BatchNorm: under DDP each worker sees only its slice of the
    batch (a few images, sometimes one in a last partial batch), where batch statistics
    are noisy or undefined; BatchNorm would also keep per-rank running statistics that
    drift apart without SyncBatchNorm, and behave differently in train and eval. GroupNorm
    normalizes each image on its own: identical on 1 or N workers, in train and eval,
    and with no buffers to synchronize or checkpoint.

    `forward(images [B, 3, S, S] float) -> logits [B, n_classes]`; any S >= 8 works
    because of the global pooling.
    """

    def __init__(self, n_classes: int, channels: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        c = channels
        self.features = nn.Sequential(
            ConvBlock(in_channels, c, pool=True),
            ConvBlock(c, 2 * c, pool=True),
            ConvBlock(2 * c, 4 * c, pool=True),
            ConvBlock(4 * c, 4 * c, pool=False),
        )
        self.head = nn.Linear(4 * c, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features(images).mean(dim=(2, 3))  # global average pool
        logits: torch.Tensor = self.head(x)
        return logits


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
